//! One row per CPython version: how its stacks are walked (a built-in layout, or where its
//! own `_Py_DebugOffsets` keep the offsets) and how its objects are read, side by side, so
//! a version is either fully described or visibly partial (3.14: walked, objects not read).
//! `row` is the one place a version is matched.
//!
//! Owns the table; the layouts themselves are in `layout` and `objects`, and what a reader
//! does without an object layout is the reader's.

use super::{
    layout::{DebugFieldPositions, PyLayout, DEBUG_313, DEBUG_314, PY311, PY312},
    objects::{ObjectLayout, OBJECTS_311, OBJECTS_312, OBJECTS_313},
};

/// How a version's stacks are walked.
#[derive(Clone, Debug)]
pub(super) enum Walk {
    /// A built-in layout (no debug offsets in the interpreter).
    BuiltIn(PyLayout),
    /// The interpreter's `_Py_DebugOffsets`, at these positions.
    DebugOffsets(DebugFieldPositions),
}

/// Everything ProfileMate knows about one CPython minor version.
#[derive(Clone, Debug)]
pub struct CPython {
    /// (major, minor).
    pub version: (u8, u8),
    /// How its stacks are walked.
    pub(super) walk: Walk,
    /// How its objects are read (None: not read; the vLLM readers then stay off).
    pub objects: Option<ObjectLayout>,
}

/// Every supported version, oldest first.
pub static CPYTHONS: [CPython; 4] = [
    CPython {
        version: (3, 11),
        walk: Walk::BuiltIn(PY311),
        objects: Some(OBJECTS_311),
    },
    CPython {
        version: (3, 12),
        walk: Walk::BuiltIn(PY312),
        objects: Some(OBJECTS_312),
    },
    CPython {
        version: (3, 13),
        walk: Walk::DebugOffsets(DEBUG_313),
        objects: Some(OBJECTS_313),
    },
    CPython {
        version: (3, 14),
        walk: Walk::DebugOffsets(DEBUG_314),
        objects: None,
    },
];

/// The row of `version`, if it is supported.
#[must_use]
pub fn row(version: (u8, u8)) -> Option<&'static CPython> {
    CPYTHONS.iter().find(|r| r.version == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_walks_its_own_version_and_only_3_14_has_no_object_layout() {
        for r in &CPYTHONS {
            let walked = match &r.walk {
                Walk::BuiltIn(l) => l.version,
                Walk::DebugOffsets(p) => p.version,
            };
            assert_eq!(walked, r.version);
            assert_eq!(r.objects.is_none(), r.version == (3, 14), "{:?}", r.version);
        }
        assert!(row((3, 10)).is_none() && row((3, 15)).is_none());
    }
}
