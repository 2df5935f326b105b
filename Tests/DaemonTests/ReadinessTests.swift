import Foundation
import TestThreads
import Testing
import TestSupport

/// What the daemon tells systemd while it starts, read from a notification socket the test binds.
@Suite(.ownThread) struct ReadinessTests {
    /// A slow first registration: the start-up timeout is extended while it runs, and READY comes only when the
    /// identities are live, so a service ordered after bunq-sessiond finds a token at once.
    @Test func aSlowFirstRegistrationExtendsTheStartTimeoutAndReadyMeansLive() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let sandbox = try await Sandbox.start(in: dir, [])
        defer { _ = sandbox.child.stop() }
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: true)
        try sandbox.admin("POST", "faults", #"{"endpoint":"POST /v1/device-server","delay_ms":2500,"count":2}"#)
        let notifications = try NotifySocket()
        let daemon = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon.log"),
                                      environment: ["NOTIFY_SOCKET": notifications.path])
        defer { _ = daemon.stop(signal: SIGKILL) }

        var received: [String] = []
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, !received.contains(where: { $0.hasPrefix("READY=1") }) {
            if let message = notifications.next(timeout: 1) { received.append(message) }
        }
        let extend = received.firstIndex { $0.hasPrefix("EXTEND_TIMEOUT_USEC=30000000\nSTATUS=registering ") }
        let ready = received.firstIndex { $0.hasPrefix("READY=1\nSTATUS=2 live, 0 failing") }
        #expect(extend != nil, "EXTEND_TIMEOUT_USEC while registering: \(received)")
        #expect(ready != nil, "READY with both identities live: \(received)")
        if let extend, let ready { #expect(extend < ready) }
        // At READY, both tokens are there to take.
        let client = try RawSocketClient(dir.path("socket"))
        for context in ["provider", "ops"] {
            let session = result(client.call(#"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"\#(context)"}}"#))
            #expect((session?["token"] as? String)?.count == 64, "\(context) is live at READY")
        }
    }

    /// bunq down at the first start: READY still comes once the first attempt has failed, with a STATUS line
    /// that says so; the daemon keeps retrying behind it.
    @Test func aFailingFirstRegistrationStillGetsReadyAndSaysSo() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let sandbox = try await Sandbox.start(in: dir, [])
        defer { _ = sandbox.child.stop() }
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false)
        try sandbox.admin("POST", "faults", #"{"endpoint":"POST /v1/installation","status":503,"count":1000}"#)
        let notifications = try NotifySocket()
        let daemon = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon.log"),
                                      environment: ["NOTIFY_SOCKET": notifications.path])
        defer { _ = daemon.stop(signal: SIGKILL) }

        var ready: String?
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, ready == nil {
            if let message = notifications.next(timeout: 1), message.hasPrefix("READY=1") { ready = message }
        }
        #expect(ready?.hasPrefix("READY=1\nSTATUS=0 live, 1 failing") == true, "\(ready ?? "no READY")")
    }
}
