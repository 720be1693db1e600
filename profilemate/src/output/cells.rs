//! The rule every CSV text cell passes through on its way into a session file.
//!
//! Owns: neutralizing text that a spreadsheet would run as a formula (CSV injection) and
//! removing control characters, in one place, for every CSV file. Request ids come from the
//! server's clients, function and file names and thread names from the target: none of them
//! may reach a cell raw. Does not own: quoting and escaping of delimiters and quotes (the
//! `csv` crate does that), or JSON (whose strings are never run).
//!
//! The rule (docs/OUTPUTS.md, "Text cells"), applied to string values only — numbers are
//! serialized as numbers and never changed, so a negative number (`-3.5`) stays a number:
//! 1. NUL is removed;
//! 2. every other control character (U+0001-U+001F, U+007F-U+009F) except TAB becomes
//!    U+FFFD, so CR and LF can no longer split a row for line-based tools;
//! 3. a cell that then begins with `=`, `+`, `-`, `@`, TAB or CR gets a leading `'`
//!    (OWASP's CSV-injection rule), which spreadsheets show and do not evaluate.
//!
//! See <https://owasp.org/www-community/attacks/CSV_Injection>.

use std::borrow::Cow;

use serde::ser::{
    Serialize, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant, SerializeTuple,
    SerializeTupleStruct, SerializeTupleVariant, Serializer,
};

/// Characters that make a spreadsheet treat a cell as a formula.
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// `text` as it may appear in a CSV cell (see the module documentation).
#[must_use]
pub fn neutralize(text: &str) -> Cow<'_, str> {
    let controls = text.chars().any(|c| c.is_control() && c != '\t');
    if !controls && !text.starts_with(FORMULA_START) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        match c {
            '\0' => {}
            '\t' => out.push('\t'),
            c if c.is_control() => out.push(char::REPLACEMENT_CHARACTER),
            c => out.push(c),
        }
    }
    if out.starts_with(FORMULA_START) {
        out.insert(0, '\'');
    }
    Cow::Owned(out)
}

/// A row (or any value) whose strings are neutralized as it is serialized.
pub struct Guarded<'a, T: ?Sized>(pub &'a T);

impl<T: Serialize + ?Sized> Serialize for Guarded<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(Guard(s))
    }
}

/// Wraps a serializer (and its compound serializers): strings, chars and bytes are
/// neutralized, everything else passes through unchanged.
struct Guard<S>(S);

macro_rules! pass {
    ($($name:ident: $t:ty),* $(,)?) => {
        $(fn $name(self, v: $t) -> Result<S::Ok, S::Error> {
            self.0.$name(v)
        })*
    };
}

impl<S: Serializer> Serializer for Guard<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Guard<S::SerializeSeq>;
    type SerializeTuple = Guard<S::SerializeTuple>;
    type SerializeTupleStruct = Guard<S::SerializeTupleStruct>;
    type SerializeTupleVariant = Guard<S::SerializeTupleVariant>;
    type SerializeMap = Guard<S::SerializeMap>;
    type SerializeStruct = Guard<S::SerializeStruct>;
    type SerializeStructVariant = Guard<S::SerializeStructVariant>;

    pass!(serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_i128: i128, serialize_u8: u8, serialize_u16: u16,
        serialize_u32: u32, serialize_u64: u64, serialize_u128: u128, serialize_f32: f32,
        serialize_f64: f64, serialize_unit_struct: &'static str);

    fn serialize_char(self, v: char) -> Result<S::Ok, S::Error> {
        self.0
            .serialize_str(&neutralize(v.encode_utf8(&mut [0; 4])))
    }
    fn serialize_str(self, v: &str) -> Result<S::Ok, S::Error> {
        self.0.serialize_str(&neutralize(v))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<S::Ok, S::Error> {
        self.0
            .serialize_str(&neutralize(&String::from_utf8_lossy(v)))
    }
    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        self.0.serialize_none()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<S::Ok, S::Error> {
        self.0.serialize_some(&Guarded(v))
    }
    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        self.0.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_unit_variant(name, index, variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        v: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_newtype_struct(name, &Guarded(v))
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0
            .serialize_newtype_variant(name, index, variant, &Guarded(v))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        self.0.serialize_seq(len).map(Guard)
    }
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        self.0.serialize_tuple(len).map(Guard)
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        self.0.serialize_tuple_struct(name, len).map(Guard)
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        self.0
            .serialize_tuple_variant(name, index, variant, len)
            .map(Guard)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        self.0.serialize_map(len).map(Guard)
    }
    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        self.0.serialize_struct(name, len).map(Guard)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        self.0
            .serialize_struct_variant(name, index, variant, len)
            .map(Guard)
    }
    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// The compound serializers: each element or field is guarded in turn.
macro_rules! compound {
    ($trait:ident, keyed) => {
        impl<S: $trait> $trait for Guard<S> {
            type Ok = S::Ok;
            type Error = S::Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                v: &T,
            ) -> Result<(), S::Error> {
                self.0.serialize_field(key, &Guarded(v))
            }
            fn skip_field(&mut self, key: &'static str) -> Result<(), S::Error> {
                self.0.skip_field(key)
            }
            fn end(self) -> Result<S::Ok, S::Error> {
                self.0.end()
            }
        }
    };
    ($trait:ident, $method:ident) => {
        impl<S: $trait> $trait for Guard<S> {
            type Ok = S::Ok;
            type Error = S::Error;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), S::Error> {
                self.0.$method(&Guarded(v))
            }
            fn end(self) -> Result<S::Ok, S::Error> {
                self.0.end()
            }
        }
    };
}

compound!(SerializeSeq, serialize_element);
compound!(SerializeTuple, serialize_element);
compound!(SerializeTupleStruct, serialize_field);
compound!(SerializeTupleVariant, serialize_field);
compound!(SerializeStruct, keyed);
compound!(SerializeStructVariant, keyed);

impl<S: SerializeMap> SerializeMap for Guard<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), S::Error> {
        self.0.serialize_key(&Guarded(k))
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), S::Error> {
        self.0.serialize_value(&Guarded(v))
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_get_a_leading_quote() {
        for (raw, cell) in [
            (
                r#"=HYPERLINK("http://evil.example/","x")"#,
                r#"'=HYPERLINK("http://evil.example/","x")"#,
            ),
            ("+1+2", "'+1+2"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1"),
            ("req-1", "req-1"),
            ("a=b", "a=b"),
            ("", ""),
        ] {
            assert_eq!(neutralize(raw), cell, "{raw:?}");
        }
    }

    #[test]
    fn control_characters_are_removed_or_replaced() {
        assert_eq!(neutralize("a\0b"), "ab");
        assert_eq!(
            neutralize("a\nb\rc\u{1b}d\u{85}"),
            "a\u{FFFD}b\u{FFFD}c\u{FFFD}d\u{FFFD}"
        );
        assert_eq!(
            neutralize("\r=1"),
            "\u{FFFD}=1",
            "CR replaced first, then not a formula"
        );
        assert_eq!(
            neutralize("\0=1"),
            "'=1",
            "NUL removed first, then a formula"
        );
        assert_eq!(neutralize("tab\tkept"), "tab\tkept");
    }

    #[derive(serde::Serialize)]
    struct Row<'a> {
        request_id: &'a str,
        delta: f64,
        count: i64,
        name: Option<String>,
        method: &'a str,
    }

    fn csv_of(row: &Row<'_>) -> String {
        let mut w = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::new());
        w.serialize(Guarded(row)).expect("serialize");
        String::from_utf8(w.into_inner().expect("flush")).expect("utf-8")
    }

    #[test]
    fn only_text_cells_change_numbers_stay_numbers() {
        let row = Row {
            request_id: "=cmd|'/c calc'!A0",
            delta: -3.5,
            count: -7,
            name: Some("-x\ny".to_owned()),
            method: "sampled",
        };
        assert_eq!(
            csv_of(&row),
            "'=cmd|'/c calc'!A0,-3.5,-7,'-x\u{FFFD}y,sampled\n"
        );
    }
}
