// A valid IDL file expands into types, consts and a protocol module (client,
// async client, server trait, events) that ordinary code uses.
shm_channel::include_idl!("tests/ui/idl/counter.idl");

/// A server: the generated trait, implemented by hand.
struct Total(u64);

impl counter::Server for Total {
    fn add(
        &mut self,
        _ctx: &counter::Context<'_>,
        by: u64,
        label: &str,
    ) -> Result<u64, CounterError> {
        if label == "locked" {
            return Err(CounterError::Locked(7));
        }
        self.0 = self.0.checked_add(by).ok_or(CounterError::Overflow)?;
        Ok(self.0)
    }

    fn mark(&mut self, _ctx: &counter::Context<'_>, _at: Point) {}
}

/// The clients' types exist with their default transport.
fn _clients(_: Option<counter::Client>, _: Option<counter::AsyncClient>) {}

fn main() {
    let at = Point { x: 3, y: -4 };
    assert_eq!(at, Point { x: 3, y: -4 });
    assert_ne!(CounterError::Locked(7), CounterError::Overflow);
    assert_eq!(MAX_LABEL, 64);
    assert_eq!(counter::NAME, "Counter");
    assert_eq!(counter::VERSION, 1);
    assert_eq!(counter::ADD.name, "add");
    assert!(counter::CLIENT_TO_SERVER_MAX >= 4096);
    let _server: Box<dyn counter::Server> = Box::new(Total(0));
}
