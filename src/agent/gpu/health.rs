//! GPU health rules and Xid parsing: not written yet.
