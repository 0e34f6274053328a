//! Hostile input: the store — permissions, empty or damaged database files.
