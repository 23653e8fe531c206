//! The kamal-proxy control plane: the protocol between the CLI and the running server over a
//! unix socket, and the persisted state file. No HTTP here.
