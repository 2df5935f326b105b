import Foundation
import TestThreads
import Testing
import TestSupport

/// The real daemon against the emulator at its strictest (dead sessions answered in bunq's three ways, request
/// ids single-use, devices bound to addresses, proxies' HTML failures), with bunq's limits on, scaled to a tenth.
@Suite(.ownThread) struct FidelityEndToEndTests {
    /// What bunq answers `GET /v1/user` with this token: status and `error_description`.
    static func answer(_ sandbox: Sandbox, token: String) throws -> (status: Int, error: String) {
        let output = try Command.check(["curl", "-s", "-w", "\n%{http_code}", "-H", "X-Bunq-Client-Authentication: \(token)",
                                        sandbox.base + "/v1/user"])
        let lines = output.stdoutText.split(separator: "\n")
        let json = lines.dropLast().joined(separator: "\n")
        let error = ((try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any])
            .flatMap { ($0["Error"] as? [[String: Any]])?.first?["error_description"] as? String } ?? ""
        return (Int(lines.last ?? "") ?? -1, error)
    }

    /// Sessions killed at bunq, answered 401 and 403 in both wordings: each report replaces the token once,
    /// and the dead token is never handed out after it.
    @Test func killedSessionsAreReplacedOnTheFirstReportWhateverBunqSays() async throws {
        let running = try await RunningDaemon.start(provider: true)
        defer { running.stop() }
        var answers: [String] = []
        // The test's own GETs are paced under bunq's GET limit (3 per 0.3 s at this scale): each 0.4 s apart.
        let pace = { try await Task.sleep(for: .milliseconds(400)) }
        for round in 0..<3 {
            let before = try #require(BudgetEndToEndTests.token(running.socket, "ops"))
            try await pace()
            #expect(try running.sandbox.userStatus(token: before.token) == 200)
            #expect(try running.sandbox.admin("POST", "sessions/kill", #"{"token":"\#(before.token)"}"#)["killed"] as? Int == 1)
            try await pace()
            let dead = try Self.answer(running.sandbox, token: before.token)
            #expect([401, 403].contains(dead.status), "round \(round): \(dead)")
            answers.append("\(dead.status) \(dead.error)")
            let client = try RawSocketClient(running.socket)
            let report = #"{"jsonrpc":"2.0","id":1,"method":"session.report_invalid","params":{"context":"ops","generation":\#(before.generation)}}"#
            let renewed = try #require(result(client.call(report)), "report answered in round \(round)")
            #expect(renewed["generation"] as? Int == before.generation + 1)
            let after = try #require(BudgetEndToEndTests.token(running.socket, "ops"))
            #expect(after.token != before.token, "the dead token is not handed out again")
            try await pace()
            #expect(try running.sandbox.userStatus(token: after.token) == 200)
        }
        #expect(Set(answers) == ["401 Insufficient authentication.", "403 Insufficient authentication.",
                                 "403 Insufficient authorisation."], "bunq's three answers met: \(answers)")
        // The provider's OAuth client setup went through the strict emulator too: fresh request ids, bunq's
        // headers, its paging.
        #expect(try running.sandbox.stat("request_ids_rejected") == 0)
        #expect(try running.sandbox.stat("rate_limited") == 0)
    }

    /// A storm of HTML 502 pages and empty 503s from "a load balancer" while a new identity registers: every
    /// one is transient, retried with backoff, and the identity comes live; nothing needs attention.
    @Test func anHTMLBadGatewayStormIsRetriedNotFatal() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let sandbox = try await Sandbox.start(in: dir, [])
        defer { _ = sandbox.child.stop() }
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false,
                                     extra: "renewal:\n  backoff_base: 0.2\n  backoff_max: 2\n")
        try sandbox.admin("POST", "faults", #"{"endpoint":"POST /v1/*","preset":"html_502","count":4}"#)
        try sandbox.admin("POST", "faults", #"{"endpoint":"POST /v1/session-server","preset":"empty_503","count":2}"#)
        let daemon = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon.log"))
        defer { _ = daemon.stop() }
        #expect(await daemon.waitFor(.seconds(60)) { _ in BudgetEndToEndTests.states(dir.path("socket"))["ops"] == "live" },
                "live after the storm: \(daemon.log.suffix(2_000))")
        #expect((try sandbox.admin("GET", "faults")["faults"] as? [Any])?.isEmpty == true, "every fault was met")
        #expect(daemon.log.contains("HTTP 502") && daemon.log.contains("HTTP 503"), "the failures are logged with their status")
        #expect(!daemon.log.contains("needs attention"))
        #expect(try sandbox.stat("rate_limited") == 0)
        let token = try #require(BudgetEndToEndTests.token(dir.path("socket"), "ops"))
        #expect(try sandbox.userStatus(token: token.token) == 200)
    }

    /// A device registered for 127.0.0.1 only, and the daemon moved to leave from 127.0.0.2: bunq refuses the
    /// credentials, the context needs attention with that reason, and the daemon does not loop on it.
    @Test(.tags(.long)) func aDaemonMovedOffItsPermittedAddressNeedsAttentionOnce() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let sandbox = try await Sandbox.start(in: dir, [])
        defer { _ = sandbox.child.stop() }
        let written = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false)
        let original = try String(contentsOfFile: written, encoding: .utf8)
        let bound = try dir.write("config.yaml", original.replacingOccurrences(
            of: "bunq:\n", with: "bunq:\n  permitted_ips: [127.0.0.1]\n"))
        var daemon = try ChildProcess(Binaries.daemon, ["--config", bound], log: dir.path("daemon-1.log"))
        #expect(await daemon.waitFor(.seconds(60)) { _ in BudgetEndToEndTests.states(dir.path("socket"))["ops"] == "live" })
        #expect(daemon.stop() == 0)

        let moved = try dir.write("config.yaml", original.replacingOccurrences(
            of: "bunq:\n", with: "bunq:\n  permitted_ips: [127.0.0.1]\n  source_address: 127.0.0.2\n"))
        daemon = try ChildProcess(Binaries.daemon, ["--config", moved], log: dir.path("daemon-2.log"))
        defer { _ = daemon.stop() }
        #expect(await daemon.waitFor(.seconds(30)) { $0.contains("[bunq_sessiond] ready") })
        let calls = try sandbox.requests("POST /v1/session-server")
        let client = try RawSocketClient(dir.path("socket"))
        let renew = client.call(#"{"jsonrpc":"2.0","id":1,"method":"session.renew","params":{"context":"ops"}}"#)
        #expect(errorCode(renew) == 1004, "\(renew)")
        #expect(((renew["error"] as? [String: Any])?["data"] as? [String: Any])?["reason"] as? String == "credentials_rejected")
        #expect(BudgetEndToEndTests.states(dir.path("socket"))["ops"] == "needs_attention")
        // Ten session-server windows later: still the one refused call.
        try await Task.sleep(for: .seconds(30))
        #expect(try sandbox.requests("POST /v1/session-server") == calls + 1, "no retry loop against a refused address")
        #expect(daemon.log.components(separatedBy: "needs attention").count == 2, "said once: \(daemon.log.suffix(1_500))")
        #expect(daemon.log.contains("Incorrect API key or IP address"), "the operator is told what bunq said")
    }
}
