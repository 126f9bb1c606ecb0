//! The conformance suite on sqlite.

phalanx_conformance::conformance_tests!(phalanx_conformance::harness::Sqlite);
