//! End-to-end tests of meterstand live in `tests/`: they start a real Mosquitto broker on a
//! free port and the `meterstand` binary as a child process.
