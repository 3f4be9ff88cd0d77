#![no_std]
//! Empty library target: lets `monitor` declare this crate as a build
//! dependency, so cargo rebuilds the agent when the eBPF sources change.
