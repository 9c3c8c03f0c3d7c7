//! Load generator for opsfleet (its first version comes with the worker).

fn main() {}
