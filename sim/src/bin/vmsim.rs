//! `vmsim`: the simulator's command-line front end.
fn main() {}
