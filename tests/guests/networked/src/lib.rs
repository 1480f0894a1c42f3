//! An aggregate that reaches for the network: its component imports
//! `wasi:sockets`, which Refold refuses at upload.

#[cfg(target_family = "wasm")]
mod component {
    use refold_sdk::bindings::Guest;
    use refold_sdk::bindings::refold::domain::types::{
        CommandContext, CommandError, NewEvent, StreamEvent,
    };

    struct Networked;

    impl Guest for Networked {
        /// Declares no schema versions: every event type at version 1.
        fn schema_versions() -> Vec<(String, u32)> {
            Vec::new()
        }

        fn initial_state() -> Vec<u8> {
            Vec::new()
        }

        fn handle(
            _state: Vec<u8>,
            _command: String,
            _context: CommandContext,
        ) -> Result<Vec<NewEvent>, CommandError> {
            let network = wasip2::sockets::instance_network::instance_network();
            let lookup =
                wasip2::sockets::ip_name_lookup::resolve_addresses(&network, "example.com");
            Err(CommandError::Malformed(format!("{:?}", lookup.is_ok())))
        }

        fn apply(state: Vec<u8>, _events: Vec<StreamEvent>) -> Result<Vec<u8>, String> {
            Ok(state)
        }

        fn render(_state: Vec<u8>) -> Result<String, String> {
            Ok("{}".into())
        }
    }

    refold_sdk::bindings::export_aggregate_world!(Networked with_types_in refold_sdk::bindings);
}
