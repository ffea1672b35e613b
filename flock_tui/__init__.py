"""The Flock console (Textual), its macros, and the `flockctl` command."""
