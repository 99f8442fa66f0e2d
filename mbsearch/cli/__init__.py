"""The mbsearch command line: parse, call the library, print."""
