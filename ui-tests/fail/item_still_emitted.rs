#![allow(unused)]
//! When an attribute is wrong, the items are still emitted: the only errors are the
//! attribute's own, with no "cannot find" cascade from code that uses the items.
pub struct Billing;

#[transport::service]
impl Billing {
    #[subscriber(topic = "orders", codec = "xml")]
    async fn on_order(&self, order: String) {}

    pub fn total(&self) -> u64 {
        0
    }
}

#[transport::subscriber(topik = "refunds")]
async fn on_refund(refund: String) {}

fn main() {
    let _ = Billing.total();
    let _ = Billing.on_order(String::new());
    let _ = on_refund(String::new());
}
