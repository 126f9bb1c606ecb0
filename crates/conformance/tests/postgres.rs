//! The conformance suite on postgres.

phalanx_conformance::conformance_tests!(phalanx_conformance::harness::Postgres);
