//! The folded-stack format of `cpu_profile.folded` (`flamegraph.pl`, speedscope, inferno):
//! one line per distinct stack, `frame;frame;... count`.
//!
//! Owns: escaping frame names so that each stack stays one line and each frame one field.
//! `;` separates frames and a newline separates stacks, and the format has no escape of its
//! own, so a name taken from the target (a function, file or thread name) is rewritten:
//! `;` becomes `:`, NUL is removed, every other control character (LF, CR, TAB, ...)
//! becomes U+FFFD (docs/OUTPUTS.md). Does not own: which frames a stack has (the CPU
//! attribution profiler builds them).

use std::borrow::Cow;

/// `name` as one frame of a folded stack.
#[must_use]
pub fn frame(name: &str) -> Cow<'_, str> {
    if !name.chars().any(|c| c == ';' || c.is_control()) {
        return Cow::Borrowed(name);
    }
    Cow::Owned(
        name.chars()
            .filter(|c| *c != '\0')
            .map(|c| match c {
                ';' => ':',
                c if c.is_control() => char::REPLACEMENT_CHARACTER,
                c => c,
            })
            .collect(),
    )
}

/// The file: one `stack count` line per stack, in the order given, then the samples of the
/// stacks not kept (`[other stacks] N`) when there are any.
#[must_use]
pub fn text<'a>(stacks: impl IntoIterator<Item = (&'a str, u64)>, other: u64) -> String {
    let mut out = String::new();
    for (stack, n) in stacks {
        out.push_str(stack);
        out.push(' ');
        out.push_str(&n.to_string());
        out.push('\n');
    }
    if other > 0 {
        out.push_str("[other stacks] ");
        out.push_str(&other.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_names_cannot_split_frames_or_lines() {
        assert_eq!(frame("Scheduler.schedule"), "Scheduler.schedule");
        assert_eq!(frame("a;b"), "a:b");
        assert_eq!(frame("evil\nmain 99"), "evil\u{FFFD}main 99");
        assert_eq!(frame("x\r\ty\0z"), "x\u{FFFD}\u{FFFD}yz");
    }
}
