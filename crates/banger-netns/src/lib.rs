//! Test support: network namespaces a test creates and removes, veth pairs
//! between them, and running a command or a closure inside one, so network
//! tests never touch the machine's own namespace.
