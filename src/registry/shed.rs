//! Shedding for rebalancing (PROTOCOL §4): the Registry closes the sessions the
//! rebalancer asks for with 1012 (reason `rebalance`), never a client (user and device)
//! it shed within [`SHED_MEMORY`], so no one is bounced around.

use std::time::{Duration, Instant};

use actix::prelude::*;
use herald_proto::CloseCode;

use super::Registry;
use crate::ids::{DeviceId, SessionId, UserId};

/// A client shed is not shed again within this long.
pub const SHED_MEMORY: Duration = Duration::from_secs(600);

/// Shed this many sessions now.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Shed {
    pub count: usize,
}

/// Clients shed recently, by (user, device).
pub type ShedRecently = std::collections::HashMap<(UserId, Option<DeviceId>), Instant>;

impl Handler<Shed> for Registry {
    type Result = usize;
    fn handle(&mut self, msg: Shed, _: &mut Context<Self>) -> usize {
        if self.draining {
            return 0;
        }
        let now = Instant::now();
        self.shed_recently
            .retain(|_, at| now.duration_since(*at) < SHED_MEMORY);
        let chosen: Vec<(SessionId, UserId, Option<DeviceId>)> = self
            .index
            .all()
            .filter(|(_, e)| {
                !self
                    .shed_recently
                    .contains_key(&(e.user.clone(), e.device.clone()))
            })
            .take(msg.count)
            .map(|(id, e)| (id, e.user.clone(), e.device.clone()))
            .collect();
        for (id, user, device) in &chosen {
            self.shed_recently
                .insert((user.clone(), device.clone()), now);
            self.close(*id, CloseCode::Rebalance);
        }
        self.deps.metrics.rebalance_shed.inc_by(chosen.len() as u64);
        chosen.len()
    }
}
