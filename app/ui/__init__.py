"""The dashboard at /ui and the offline API docs at /docs."""
