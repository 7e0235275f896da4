//! The host tests: the real release `kling_webhook.wasm` in a Spin-like wasmtime host.
//! One binary, so the host compiles once.

mod support;

mod smoke {
    use crate::support::components::kling_app;
    use crate::support::requests::{callback, flat, get_task};

    #[tokio::test]
    async fn a_callback_lands_and_is_served() {
        let app = kling_app();
        let reply = app.send(callback("job-1", flat("86", "job-1", "succeed", 5))).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let task = app.send(get_task("86")).await;
        assert_eq!(task.status, 200, "{:?}", task.body);
        assert_eq!(task.json()["status"], "succeed");
        println!("{}", task.json());
    }
}
