//! The realtime map's service: vehicle positions in from an MQTT topic tree (a wildcard
//! filter), each vehicle's trail kept, geofence enter/leave notices, and every position
//! sent to the browsers whose reported viewport holds it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use transport::prelude::*;
use transport::ws::{Session, WsConfig, WsError, WsMessage, WsServer};

use crate::model::{GEOFENCES, Hfp, OPERATORS, VehiclePosition, Viewport, distance_m};

/// Browser -> server: the viewport it shows.
pub const VIEWPORT: WsMessage<Viewport> = WsMessage::new(1);
/// Server -> browser: a vehicle position inside its viewport.
pub const POSITION: WsMessage<VehiclePosition> = WsMessage::new(2);
/// Server -> browser: a vehicle entered or left a geofence.
pub const NOTIFICATION: WsMessage<Notification> = WsMessage::new(3);

#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub vehicle: u32,
    pub geofence: &'static str,
    pub entered: bool,
}

/// How many positions a trail keeps.
const TRAIL: usize = 200;

/// A browser's state: the viewport it reported (nothing is sent before it has).
#[derive(Default)]
pub struct Viewer {
    pub viewport: Option<Viewport>,
}

/// One vehicle as the map knows it.
struct Tracked {
    operator: u32,
    last: VehiclePosition,
    trail: VecDeque<(f64, f64, i64)>,
    /// Which geofences it is inside.
    inside: Vec<bool>,
}

pub struct MapService {
    ws: WsServer<Viewer>,
    vehicles: Mutex<BTreeMap<u32, Tracked>>,
}

/// The browsers' server (text frames): a viewport report updates the session's state.
pub fn websocket(mut config: WsConfig) -> Result<WsServer<Viewer>, WsError> {
    config.framing = transport::ws::Framing::Text;
    WsServer::<Viewer>::builder(config)
        .handle(
            VIEWPORT,
            |viewport: Viewport, session: Session<Viewer>| async move {
                session.update(|viewer| viewer.viewport = Some(viewport));
            },
        )
        .build()
}

impl MapService {
    pub fn new(ws: WsServer<Viewer>) -> Self {
        MapService {
            ws,
            vehicles: Mutex::default(),
        }
    }

    fn vehicles(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Tracked>> {
        self.vehicles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `/api/organization`: every operator and how many vehicles it has on the map.
    pub fn organizations(&self) -> Vec<serde_json::Value> {
        let vehicles = self.vehicles();
        OPERATORS
            .iter()
            .map(|operator| {
                let count = vehicles
                    .values()
                    .filter(|v| v.operator == operator.id)
                    .count();
                serde_json::json!({ "id": operator.id, "name": operator.name, "vehicles": count })
            })
            .collect()
    }

    /// `/api/organization/{id}`: its vehicles where they are now.
    pub fn organization(&self, id: u32) -> Option<serde_json::Value> {
        let operator = OPERATORS.iter().find(|operator| operator.id == id)?;
        let positions: Vec<VehiclePosition> = self
            .vehicles()
            .values()
            .filter(|v| v.operator == id)
            .map(|v| v.last.clone())
            .collect();
        Some(serde_json::json!({ "id": operator.id, "name": operator.name, "vehicles": positions }))
    }

    /// `/api/trail/{vehicle}`: its last positions, oldest first.
    pub fn trail(&self, vehicle: u32) -> Option<Vec<(f64, f64, i64)>> {
        Some(
            self.vehicles()
                .get(&vehicle)?
                .trail
                .iter()
                .copied()
                .collect(),
        )
    }
}

#[transport::service]
impl MapService {
    #[subscriber(mqtt_filter = "/hfp/v2/journey/ongoing/vp/bus/#")]
    async fn position(&self, hfp: Hfp, ctx: &Context) -> Result<(), Error> {
        let position = hfp.vp;
        let mut notices = Vec::new();
        {
            let mut vehicles = self.vehicles();
            let tracked = vehicles.entry(position.veh).or_insert_with(|| Tracked {
                operator: position.oper,
                last: position.clone(),
                trail: VecDeque::new(),
                inside: vec![false; GEOFENCES.len()],
            });
            for (n, fence) in GEOFENCES.iter().enumerate() {
                let inside =
                    distance_m((position.lat, position.long), fence.centre) <= fence.radius_m;
                if inside != tracked.inside[n] {
                    tracked.inside[n] = inside;
                    notices.push(Notification {
                        vehicle: position.veh,
                        geofence: fence.name,
                        entered: inside,
                    });
                }
            }
            if tracked.trail.len() == TRAIL {
                tracked.trail.pop_front();
            }
            tracked
                .trail
                .push_back((position.lat, position.long, position.tsi));
            tracked.last = position.clone();
        }
        for notice in &notices {
            tracing::info!(
                vehicle = notice.vehicle,
                geofence = notice.geofence,
                entered = notice.entered,
                topic = ctx.topic(),
                "geofence"
            );
            self.ws.broadcast(NOTIFICATION, notice)?;
        }
        self.ws.broadcast_where(POSITION, &position, |viewer| {
            viewer
                .viewport
                .is_some_and(|viewport| viewport.contains(position.lat, position.long))
        })?;
        Ok(())
    }
}
