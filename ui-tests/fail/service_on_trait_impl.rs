#![allow(unused)]
pub struct Billing;

#[transport::service]
impl Default for Billing {
    fn default() -> Self {
        Billing
    }
}

fn main() {}
