import Foundation
import TestThreads
import Testing
import TestSupport

/// The real `bunq-sessiond` against the real `bunq-sandbox`, with short sessions so renewals happen in seconds.
@Suite(.ownThread) struct DaemonEndToEndTests {
    @Test(.tags(.long)) func identitiesStayLiveRestartsReuseEverythingAndRevocationNeedsAttention() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // bunq's limits at a fiftieth: session-server one call per 0.6 s. At a tenth (one per 3 s) the two identities'
        // renewals, planned in the same few seconds of twenty-second sessions, could queue for the budget past the
        // margin on a loaded machine: a run renewed the provider in the second its session expired. bunq's own
        // ratio (one call per 30 s, sessions of an hour or more) is further from that edge than either.
        let sandbox = try await Sandbox.start(in: dir, ["--session-timeout", "20", "--psd2-first-session-timeout", "20"],
                                              limits: .scaled(0.02))
        defer { _ = sandbox.child.stop() }
        let apiKey = try sandbox.newAPIKey()
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: apiKey, provider: true)

        // Three renewals each, without a gap, through the real binaries (weeks of renewals run in virtual time:
        // KeeperVirtualTimeTests).
        var daemon = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon1.log"))
        let renewedThreeTimes = await daemon.waitFor(.seconds(120)) { log in
            let all = rotations(in: log)
            return ["provider", "ops"].allSatisfy { context in all.filter { $0.context == context }.count >= 4 }
        }
        #expect(renewedThreeTimes, "both identities renewed at least 3 times: \(daemon.log.suffix(2_000))")
        #expect(daemon.stop() == 0, "SIGTERM is a clean shutdown")
        expectNoGaps(rotations(in: daemon.log))
        #expect(!daemon.log.contains(apiKey), "the API key never appears in the log")
        let reached = Dictionary(rotations(in: daemon.log).map { ($0.context, $0.generation) }, uniquingKeysWith: max)
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
        #expect(rotations(in: daemon.log).allSatisfy { $0.generation > reached[$0.context, default: .max] },
                "generations continue from the store: \(reached)")

        // A revoked key: needs attention at the next renewal attempt, logged once.
        try sandbox.admin("POST", "revoke", #"{"secret":"\#(apiKey)"}"#)
        #expect(await daemon.waitFor(.seconds(30)) { $0.contains("needs attention") && $0.contains("bunq.context=ops") })
        try await Task.sleep(for: .seconds(3))
        #expect(daemon.log.components(separatedBy: "needs attention").count == 2, "logged once, not every loop")
        #expect(daemon.stop() == 0)
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
