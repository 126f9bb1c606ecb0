//! Gossip a front hands the backend (`Frame::Gossip`): its unsigned contents are decoded
//! and applied to the backend's network graph without a signature check. Whatever a
//! front sends, the backend must neither panic nor allocate without bound; bad bytes are
//! an error, and anything that decodes is taken or ignored.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use lightning::routing::gossip::NetworkGraph;
use lightning::util::logger::{Logger, Record};
use phalanx_link::ldk::gossip::VerifiedGossip;

struct Quiet;

impl Logger for Quiet {
    fn log(&self, _record: Record) {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    // The graph gets several pieces in a row, so that updates and node announcements
    // can meet the channels announced before them.
    let graph = NetworkGraph::new(bitcoin::Network::Regtest, Arc::new(Quiet));
    for (index, chunk) in rest.split(|byte| *byte == 0xff).enumerate() {
        let contents = chunk.to_vec();
        let gossip = match (kind as usize + index) % 4 {
            0 => VerifiedGossip::ChannelAnnouncement {
                contents,
                capacity_sat: None,
            },
            1 => VerifiedGossip::ChannelAnnouncement {
                contents,
                capacity_sat: Some(u64::from(kind) * 1_000),
            },
            2 => VerifiedGossip::ChannelUpdate { contents },
            _ => VerifiedGossip::NodeAnnouncement { contents },
        };
        let _ = gossip.apply(&graph);
    }
});
