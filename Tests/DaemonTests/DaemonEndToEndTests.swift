import Foundation
import TestThreads
import Testing
import TestSupport

/// The real `bunq-sessiond` against the real `bunq-sandbox`, with short sessions so renewals happen in seconds.
@Suite(.ownThread) struct DaemonEndToEndTests {
    @Test(.tags(.long)) func identitiesStayLiveRestartsReuseEverythingAndRevocationNeedsAttention() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let sandbox = try await Sandbox.start(in: dir, ["--session-timeout", "20", "--psd2-first-session-timeout", "20"])
        defer { _ = sandbox.child.stop() }
        let apiKey = try sandbox.newAPIKey()
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: apiKey, provider: true)

        var daemon = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon1.log"))
        let renewedFiveTimes = await daemon.waitFor(.seconds(150)) { log in
            let all = rotations(in: log)
            return ["provider", "ops"].allSatisfy { context in all.filter { $0.context == context }.count >= 6 }
        }
        #expect(renewedFiveTimes, "both identities renewed at least 5 times: \(daemon.log.suffix(2_000))")
        #expect(daemon.stop() == 0, "SIGTERM is a clean shutdown")
        expectNoGaps(rotations(in: daemon.log))
        #expect(!daemon.log.contains(apiKey), "the API key never appears in the log")
        let installations = try sandbox.stat("installations")
        let devices = try sandbox.stat("device_servers")
        #expect(installations == 2 && devices == 2)
        #expect(try sandbox.stat("rate_limited") == 0, "no 429 under bunq's limits (scaled)")

        // A restart reuses the installations, devices and live sessions.
        daemon = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon2.log"))
        #expect(await daemon.waitFor(.seconds(40)) { log in
            rotations(in: log).filter { $0.context == "ops" }.count >= 1 && log.contains("identity restored")
        })
        #expect(try sandbox.stat("installations") == installations)
        #expect(try sandbox.stat("device_servers") == devices)
        #expect(rotations(in: daemon.log).allSatisfy { $0.generation > 6 }, "generations continue from the store")

        // A revoked key: needs attention at the next renewal attempt, logged once.
        try sandbox.admin("POST", "revoke", #"{"secret":"\#(apiKey)"}"#)
        #expect(await daemon.waitFor(.seconds(30)) { $0.contains("needs attention") && $0.contains("bunq.context=ops") })
        try await Task.sleep(for: .seconds(3))
        #expect(daemon.log.components(separatedBy: "needs attention").count == 2, "logged once, not every loop")
        #expect(daemon.stop() == 0)
    }

    @Test(.tags(.long)) func thirtyPercentUpstreamFailuresExpireNoSession() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // bunq's limits at a fiftieth (session-server one call per 0.6 s): every injected failure costs a slot, and
        // 20-s sessions leave 5 s to retry in.
        let sandbox = try await Sandbox.start(in: dir, ["--session-timeout", "20"], limits: .scaled(0.02))
        defer { _ = sandbox.child.stop() }
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false,
                                     extra: "renewal: {backoff_base: 0.05}")
        try sandbox.admin("POST", "faults", #"{"endpoint":"POST /v1/session-server","status":500,"probability":0.15}"#)
        try sandbox.admin("POST", "faults", #"{"endpoint":"POST /v1/session-server","status":429,"probability":0.176}"#)
        let daemon = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon.log"))
        // Until 5 renewals happened and at least 2 injected failures were met (at 30%, a handful of calls can
        // all succeed, which would prove nothing).
        let failures = { (log: String) in log.components(separatedBy: "renewal failed").count - 1 }
        let enough = await daemon.waitFor(.seconds(240)) { rotations(in: $0).count >= 6 && failures($0) >= 2 }
        #expect(daemon.stop() == 0)
        #expect(enough, "renewed 5 times through injected failures: \(daemon.log.suffix(2_000))")
        expectNoGaps(rotations(in: daemon.log))
        #expect(failures(daemon.log) >= 2, "faults were injected and retried")
        #expect(!daemon.log.contains("needs attention"))
        #expect(try sandbox.stat("rate_limited") == 0, "the daemon itself never caused a 429")
    }

    @Test func aKillDuringDeviceRegistrationLeavesNoDuplicate() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let sandbox = try await Sandbox.start(in: dir, [])
        defer { _ = sandbox.child.stop() }
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false)
        // A long delay, so the kill lands mid-call even on a loaded machine.
        try sandbox.admin("POST", "faults", #"{"endpoint":"POST /v1/device-server","delay_ms":10000,"count":1}"#)
        let first = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon1.log"))
        #expect(first.waitForBlocking(30) { $0.contains("bunq.step=device_server") })
        usleep(500_000)
        _ = first.stop(signal: SIGKILL)  // mid device-server: bunq still binds the device after its delay
        #expect(!first.log.contains("session renewed"), "killed before the bootstrap could finish")
        var processed = false
        for _ in 0..<100 where !processed {
            processed = try sandbox.stat("device_servers") == 1
            if !processed { try await Task.sleep(for: .milliseconds(200)) }
        }
        #expect(processed, "bunq processed the orphaned device-server call")

        let second = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon2.log"))
        #expect(await second.waitFor(.seconds(30)) { !rotations(in: $0).isEmpty }, "\(second.log)")
        #expect(second.log.contains("next_step=confirm_device"), "the interrupted step is confirmed, not redone")
        #expect(second.stop() == 0)
        #expect(try sandbox.stat("installations") == 1)
        #expect(try sandbox.stat("device_servers") == 1, "no second device for the installation")
    }
}
