"""The Flock console (Textual), its macros, and the `flock` command."""
