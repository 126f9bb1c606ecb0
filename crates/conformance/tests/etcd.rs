//! The conformance suite on etcd.

phalanx_conformance::conformance_tests!(phalanx_conformance::harness::Etcd);
