import Foundation
import TestThreads
import Testing
import TestSupport

/// The real daemon against the real sandbox with bunq's rate limits on both sides: the session-server budget
/// (one call per 30 s per IP, or a scaled window) is what these tests are about. What takes minutes of real time
/// (identities going live 30 s apart, hours at 70% of the budget, a skewed bunq clock over many renewals) runs in
/// virtual time in `KeeperVirtualTimeTests`, through the same keeper at bunq's real limits.
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

    /// The emulator's `--clock-offset` as the binaries meet it: the daemon goes live and reports the skew. (That
    /// renewals keep their pace and every token works whichever way bunq's clock is off is checked in virtual
    /// time, over hours: `KeeperVirtualTimeTests.aBunqClockTenMinutesOffChangesNothing`.)
    @Test func aSandboxClockTenMinutesBehindIsReportedAsSkew() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let sandbox = try await Sandbox.start(in: dir, ["--clock-offset=-600"])
        defer { _ = sandbox.child.stop() }
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false)
        let daemon = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon.log"))
        defer { _ = daemon.stop() }
        #expect(await daemon.waitFor(.seconds(30)) { _ in Self.token(dir.path("socket"), "ops") != nil })
        let token = try #require(Self.token(dir.path("socket"), "ops"))
        #expect(try sandbox.userStatus(token: token.token) == 200, "its token works")
        #expect(await daemon.waitFor(.seconds(10)) { $0.contains("clock skew with bunq") }, "the skew is reported")
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
