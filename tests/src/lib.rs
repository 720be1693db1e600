//! Helpers shared by the end-to-end tests: building the fixture artifacts, spawning targets
//! that are killed on drop, running `profilemate attach`, and parsing the ground-truth log.
