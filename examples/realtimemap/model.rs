//! The synthetic city: operators, routes (closed loops), circular geofences, and vehicles
//! moving along the routes. Deterministic (a fixed layout, positions a function of time),
//! so runs and tests see the same traffic.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize)]
pub struct Operator {
    pub id: u32,
    pub name: &'static str,
}

pub const OPERATORS: [Operator; 3] = [
    Operator {
        id: 12,
        name: "Helsingin Bussiliikenne",
    },
    Operator {
        id: 18,
        name: "Pohjolan Liikenne",
    },
    Operator {
        id: 22,
        name: "Nobina",
    },
];

/// A closed route: an ellipse around a point, `(lat, long)` radii in degrees.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Route {
    pub id: &'static str,
    pub centre: (f64, f64),
    pub radii: (f64, f64),
    /// Seconds for one lap.
    pub lap: f64,
}

pub const ROUTES: [Route; 3] = [
    Route {
        id: "550",
        centre: (60.17, 24.90),
        radii: (0.010, 0.030),
        lap: 120.0,
    },
    Route {
        id: "55",
        centre: (60.18, 24.96),
        radii: (0.008, 0.015),
        lap: 90.0,
    },
    Route {
        id: "23",
        centre: (60.16, 24.95),
        radii: (0.005, 0.012),
        lap: 60.0,
    },
];

impl Route {
    /// The point `turn` (0 to 1) of the way round the loop.
    pub fn point(&self, turn: f64) -> (f64, f64) {
        let angle = turn * std::f64::consts::TAU;
        (
            self.centre.0 + self.radii.0 * angle.sin(),
            self.centre.1 + self.radii.1 * angle.cos(),
        )
    }

    /// The loop as `points` points, closed (the last is the first), for drawing.
    pub fn outline(&self, points: usize) -> Vec<(f64, f64)> {
        (0..=points)
            .map(|n| self.point(n as f64 / points as f64))
            .collect()
    }
}

/// A circular geofence.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Geofence {
    pub name: &'static str,
    pub centre: (f64, f64),
    pub radius_m: f64,
}

pub const GEOFENCES: [Geofence; 2] = [
    Geofence {
        name: "Kamppi",
        centre: (60.17, 24.93),
        radius_m: 600.0,
    },
    Geofence {
        name: "Kallio",
        centre: (60.188, 24.96),
        radius_m: 500.0,
    },
];

/// A vehicle: its operator, number and route, and where on the lap it started.
#[derive(Debug, Clone, Copy)]
pub struct Vehicle {
    pub operator: u32,
    pub number: u32,
    pub route: usize,
    pub phase: f64,
}

/// Every vehicle: four per route, spread around it, operators taking turns.
pub fn vehicles() -> Vec<Vehicle> {
    (0..ROUTES.len() * 4)
        .map(|n| Vehicle {
            operator: OPERATORS[n % OPERATORS.len()].id,
            number: 100 + n as u32,
            route: n % ROUTES.len(),
            phase: (n / ROUTES.len()) as f64 / 4.0,
        })
        .collect()
}

/// A vehicle position in the HFP feed's shape (`{"VP": {...}}`), the payload on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hfp {
    #[serde(rename = "VP")]
    pub vp: VehiclePosition,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VehiclePosition {
    /// The route.
    pub desi: String,
    pub oper: u32,
    pub veh: u32,
    /// Milliseconds since the epoch.
    pub tsi: i64,
    pub lat: f64,
    pub long: f64,
    /// Heading, degrees.
    pub hdg: u32,
}

impl Vehicle {
    /// Where it is `at_millis` after the epoch.
    pub fn position(&self, at_millis: i64) -> Hfp {
        let route = &ROUTES[self.route];
        let turn = (at_millis as f64 / 1000.0 / route.lap + self.phase).fract();
        let (lat, long) = route.point(turn);
        let heading = (turn * 360.0 + 90.0).rem_euclid(360.0) as u32;
        Hfp {
            vp: VehiclePosition {
                desi: route.id.to_string(),
                oper: self.operator,
                veh: self.number,
                tsi: at_millis,
                lat,
                long,
                hdg: heading,
            },
        }
    }

    /// The HFP topic it publishes on.
    pub fn topic(&self) -> String {
        format!(
            "/hfp/v2/journey/ongoing/vp/bus/{:04}/{:05}/{}/1",
            self.operator, self.number, ROUTES[self.route].id
        )
    }
}

/// Metres between two points (equirectangular: fine at city scale).
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let mean_lat = ((a.0 + b.0) / 2.0).to_radians();
    let dy = (a.0 - b.0).to_radians();
    let dx = (a.1 - b.1).to_radians() * mean_lat.cos();
    6_371_000.0 * (dx * dx + dy * dy).sqrt()
}

/// A browser's viewport: what it shows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Viewport {
    pub south: f64,
    pub west: f64,
    pub north: f64,
    pub east: f64,
}

impl Viewport {
    pub fn contains(&self, lat: f64, long: f64) -> bool {
        (self.south..=self.north).contains(&lat) && (self.west..=self.east).contains(&long)
    }
}
