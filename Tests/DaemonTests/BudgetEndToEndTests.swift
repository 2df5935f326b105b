import Foundation
import TestThreads
import Testing
import TestSupport

/// The real daemon against the real sandbox with bunq's rate limits on both sides: the session-server budget
/// (one call per 30 s per IP, or a scaled window) is what these tests are about.
@Suite(.ownThread) struct BudgetEndToEndTests {
    /// The contexts' states from `daemon.status` and `context.list`.
    static func states(_ socket: String) -> [String: String] {
        guard let client = try? RawSocketClient(socket),
              let list = result(client.call(#"{"jsonrpc":"2.0","id":1,"method":"context.list"}"#))?["contexts"] as? [[String: Any]]
        else { return [:] }
        return Dictionary(list.compactMap { item in
            (item["name"] as? String).map { ($0, item["state"] as? String ?? "?") }
        }, uniquingKeysWith: { a, _ in a })
    }

    static func token(_ socket: String, _ context: String) -> (token: String, generation: Int)? {
        guard let client = try? RawSocketClient(socket),
              let got = result(client.call(#"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"\#(context)"}}"#)),
              let token = got["token"] as? String, let generation = got["generation"] as? Int else { return nil }
        return (token, generation)
    }

    @Test func fourNewIdentitiesGoLiveWithin100SecondsAtBunqsRealLimits() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let sandbox = try await Sandbox.start(in: dir, [], limits: .bunq)
        defer { _ = sandbox.child.stop() }
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false,
                                     moreKeys: [try sandbox.newAPIKey(), try sandbox.newAPIKey(), try sandbox.newAPIKey()])
        let started = ContinuousClock.now
        let daemon = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon.log"))
        defer { _ = daemon.stop() }
        var live = 0
        while ContinuousClock.now - started < .seconds(100), live < 4 {
            live = Self.states(dir.path("socket")).values.filter { $0 == "live" }.count
            if live < 4 { try await Task.sleep(for: .milliseconds(250)) }
        }
        let took = ContinuousClock.now - started
        #expect(live == 4, "four identities live within 100 s: \(live) after \(took); \(daemon.log.suffix(1_500))")
        #expect(try sandbox.requests("POST /v1/session-server") == 4, "one session-server call each")
        #expect(try sandbox.stat("rate_limited") == 0, "no 429")
        // Three calls spaced by bunq's 30 s: the last identity waited about 90 s, no longer.
        #expect(took > .seconds(89), "bunq's window was respected: \(took)")
    }

    @Test func tenIdentitiesAt70PercentServeOnlyWorkingTokensForThreeMinutes() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // 60-s sessions, renewed every 45 s, ten of them against one call per 3.03 s: 67% of the budget.
        let sandbox = try await Sandbox.start(in: dir, ["--session-timeout", "60"])
        defer { _ = sandbox.child.stop() }
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false,
                                     moreKeys: try (1...9).map { _ in try sandbox.newAPIKey() })
        // Making ten sandbox users quickly can meet the sandbox's POST limit (the harness waits those out): only
        // 429s from here on are the daemon's.
        let limitedBefore = try sandbox.stat("rate_limited")
        let daemon = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon.log"))
        defer { _ = daemon.stop() }
        let names = ["ops"] + (1...9).map { "id-\($0)" }
        #expect(await daemon.waitFor(.seconds(90)) { _ in Self.states(dir.path("socket")).values.filter { $0 == "live" }.count == 10 })
        var checked = 0, refused: [String] = [], generations: [String: Set<Int>] = [:]
        let end = ContinuousClock.now + .seconds(180)
        var index = 0
        while ContinuousClock.now < end {
            // One check every 0.4 s: well inside bunq's GET limit (3 per 0.3 s scaled), on an endpoint the daemon
            // never calls.
            let name = names[index % names.count]
            index += 1
            if let (token, generation) = Self.token(dir.path("socket"), name) {
                generations[name, default: []].insert(generation)
                let status = try sandbox.userStatus(token: token)
                checked += 1
                if status != 200 { refused.append("\(name) generation \(generation): HTTP \(status)") }
            }
            try await Task.sleep(for: .milliseconds(400))
        }
        #expect(checked > 300, "tokens were checked: \(checked)")
        #expect(refused.isEmpty, "every token handed out works: \(refused)")
        #expect(names.allSatisfy { (generations[$0]?.count ?? 0) >= 3 }, "each renewed through the run: \(generations)")
        #expect(try sandbox.stat("rate_limited") == limitedBefore, "no 429 caused by the daemon")
        let status = try #require(result(try RawSocketClient(dir.path("socket"))
            .call(#"{"jsonrpc":"2.0","id":1,"method":"daemon.status"}"#)))
        let budget = try #require((status["budget"] as? [String: Any])?["session_server"] as? [String: Any])
        let utilisation = try #require(budget["utilisation"] as? Double)
        #expect(utilisation > 0.6 && utilisation < 0.75, "daemon.status says 67%: \(budget)")
        #expect(budget["available_per_day"] as? Double == 28_800)
    }

    @Test func aReportedTokenIsReplacedOncePerGeneration() async throws {
        let running = try await RunningDaemon.start(provider: false)
        defer { running.stop() }
        let before = try #require(Self.token(running.socket, "ops"))
        let created = try running.sandbox.stat("sessions_created")
        let client = try RawSocketClient(running.socket)
        let report = #"{"jsonrpc":"2.0","id":2,"method":"session.report_invalid","params":{"context":"ops","generation":\#(before.generation)}}"#
        let renewed = try #require(result(client.call(report)), "report answered")
        #expect(renewed["generation"] as? Int == before.generation + 1)
        let after = try #require(Self.token(running.socket, "ops"))
        #expect(after.token != before.token && after.generation == before.generation + 1)
        #expect(try running.sandbox.stat("sessions_created") == created + 1)
        // Reporting the old generation again (a second caller, late) renews nothing.
        let again = try #require(result(client.call(report)))
        #expect(again["generation"] as? Int == before.generation + 1)
        #expect(try running.sandbox.stat("sessions_created") == created + 1, "no second renewal for one generation")
        let future = #"{"jsonrpc":"2.0","id":3,"method":"session.report_invalid","params":{"context":"ops","generation":99}}"#
        #expect(errorCode(client.call(future)) == -32602, "a generation never handed out is refused")
        #expect(try running.sandbox.stat("rate_limited") == 0)
    }

    @Test func anInvalidSignatureNeedsAttentionAfterOneAttempt() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let sandbox = try await Sandbox.start(in: dir, [])
        defer { _ = sandbox.child.stop() }
        try sandbox.admin("POST", "faults",
                          #"{"endpoint":"POST /v1/session-server","status":400,"error":"The request signature is invalid."}"#)
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false)
        let daemon = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon.log"))
        defer { _ = daemon.stop() }
        #expect(await daemon.waitFor(.seconds(30)) { _ in Self.states(dir.path("socket"))["ops"] == "needs_attention" })
        // Ten session-server windows later: still the one call.
        try await Task.sleep(for: .seconds(30))
        #expect(try sandbox.requests("POST /v1/session-server") == 1, "no further session-server calls for it")
        let client = try RawSocketClient(dir.path("socket"))
        let got = client.call(#"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#)
        #expect(errorCode(got) == 1004)
        #expect(((got["error"] as? [String: Any])?["data"] as? [String: Any])?["reason"] as? String == "signature_invalid")
        #expect(daemon.log.components(separatedBy: "needs attention").count == 2, "logged once")
    }

    @Test(arguments: [600, -600])
    func aSandboxClockTenMinutesOffChangesNothing(_ offset: Int) async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let lifetime = 40
        let sandbox = try await Sandbox.start(in: dir, ["--session-timeout", "\(lifetime)", "--clock-offset=\(offset)"])
        defer { _ = sandbox.child.stop() }
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false)
        let daemon = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon.log"))
        defer { _ = daemon.stop() }
        #expect(await daemon.waitFor(.seconds(30)) { _ in Self.token(dir.path("socket"), "ops") != nil })
        let end = ContinuousClock.now + .seconds(lifetime * 5 / 2)
        var refused: [String] = [], checked = 0
        while ContinuousClock.now < end {
            if let (token, generation) = Self.token(dir.path("socket"), "ops") {
                checked += 1
                let status = try sandbox.userStatus(token: token)
                if status != 200 { refused.append("generation \(generation): HTTP \(status)") }
            }
            try await Task.sleep(for: .milliseconds(500))
        }
        // About one check a second at the least, however loaded the machine (each check is a curl to the sandbox).
        #expect(checked >= 100, "\(checked)")
        #expect(refused.isEmpty, "every token works: \(refused)")
        // 100 s of 40-s sessions renewed at ~75%: about three renewals, neither a loop nor a gap.
        let renewals = rotations(in: daemon.log).filter { $0.context == "ops" }
        #expect(renewals.count >= 3 && renewals.count <= 5, "on schedule: \(renewals.count) sessions")
        for (previous, next) in zip(renewals, renewals.dropFirst()) {
            let interval = next.at.timeIntervalSince(previous.at)
            #expect(interval >= 20 && interval <= 36, "renewed at 65–85% of 40 s (log seconds): \(interval)")
        }
        #expect(daemon.log.contains("clock skew with bunq"), "the skew is reported")
    }

    /// Unlimited on purpose: `rate_limits: unlimited` is what this test is about (the mode for an emulator run
    /// with `--rate-limits off`): no budget, no warning, sessions as usual.
    @Test func unlimitedHasNoBudget() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let sandbox = try await Sandbox.start(in: dir, [], limits: .off)
        defer { _ = sandbox.child.stop() }
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: true)
        let daemon = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon.log"))
        defer { _ = daemon.stop() }
        #expect(await daemon.waitFor(.seconds(30)) { _ in Self.states(dir.path("socket")).values.filter { $0 == "live" }.count == 2 })
        try await Task.sleep(for: .seconds(1))
        let status = try #require(result(try RawSocketClient(dir.path("socket"))
            .call(#"{"jsonrpc":"2.0","id":1,"method":"daemon.status"}"#)))
        let budget = try #require((status["budget"] as? [String: Any])?["session_server"] as? [String: Any])
        #expect(budget["available_per_day"] is NSNull, "no limit: \(budget)")
        #expect(daemon.process.isRunning && !daemon.log.contains("budget"), "\(daemon.log.suffix(1_000))")
    }

    /// Demand above 80% and above 100% of the (scaled) budget: each warning is logged, once, and the status
    /// shows the utilisation.
    @Test(arguments: [(identities: 2, lifetime: 9, message: "session-server budget above 80%", percent: 89),
                      (identities: 3, lifetime: 10, message: "session-server budget exceeded", percent: 120)])
    func theBudgetWarnsAbove80And100Percent(_ load: (identities: Int, lifetime: Int, message: String, percent: Int)) async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let sandbox = try await Sandbox.start(in: dir, ["--session-timeout", "\(load.lifetime)"])
        defer { _ = sandbox.child.stop() }
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false,
                                     moreKeys: try (1..<load.identities).map { _ in try sandbox.newAPIKey() })
        let limitedBefore = try sandbox.stat("rate_limited")
        let daemon = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon.log"))
        defer { _ = daemon.stop() }
        #expect(await daemon.waitFor(.seconds(40)) { $0.contains(load.message) }, "\(daemon.log.suffix(1_500))")
        let status = try Command.check([Binaries.directory.appendingPathComponent("bunq-sessionctl").path, "status",
                                        "--socket", dir.path("socket")])
        #expect(status.stdoutText.contains("session-server budget: \(load.percent)%"), "\(status.stdoutText)")
        try await Task.sleep(for: .seconds(11))
        #expect(daemon.log.components(separatedBy: load.message).count == 2, "logged once, not every check")
        #expect(try sandbox.stat("rate_limited") == limitedBefore)
    }
}
