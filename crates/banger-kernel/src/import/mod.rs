//! Importing a kernel from files on the host (filled in by the import work).
