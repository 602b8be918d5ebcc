"""The server and the measuring of bench/abuse.py."""
