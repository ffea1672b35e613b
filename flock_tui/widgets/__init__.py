"""The console's own widgets: the flock table, the footer, table helpers."""
