//! Load generator for opsfleet.
