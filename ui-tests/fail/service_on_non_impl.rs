#![allow(unused)]
#[transport::service]
pub struct Billing;

#[transport::service]
fn main() {}
