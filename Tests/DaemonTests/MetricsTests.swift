import Foundation
import TestThreads
import Testing
import TestSupport

/// `GET /metrics` on the real daemon, parsed by the Prometheus project's own Python parser (`prometheus-client`,
/// installed by `make test` into .build/sdk-venv): the families exist, the context gauges agree with
/// `daemon.status`, expiries lie ahead, a renewal counts, and no token or key appears anywhere. The alert rules
/// shipped in contrib/ pass `promtool check rules` and their unit tests.
@Suite(.ownThread) struct MetricsTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static var python: String { repository.appendingPathComponent(".build/sdk-venv/bin/python").path }

    /// The samples of a scrape as the parser read them: family name and type, sample name, labels, value.
    struct Sample {
        let family: String
        let type: String
        let name: String
        let labels: [String: String]
        let value: Double
    }

    static func parse(_ text: String, in dir: TemporaryDirectory) throws -> [Sample] {
        let script = try dir.write("parse.py", """
            import json, sys
            from prometheus_client.parser import text_string_to_metric_families
            out = []
            for family in text_string_to_metric_families(sys.stdin.read()):
                for sample in family.samples:
                    out.append([family.name, family.type, sample.name, sample.labels, sample.value])
            print(json.dumps(out))
            """)
        let output = try Command.run([python, script], stdin: Data(text.utf8))
        guard output.status == 0, let rows = try JSONSerialization.jsonObject(with: output.stdout) as? [[Any]] else {
            throw HarnessError("the Prometheus parser refused the scrape: \(output.stderrText)")
        }
        return rows.compactMap { row in
            guard let family = row[0] as? String, let type = row[1] as? String, let name = row[2] as? String,
                  let labels = row[3] as? [String: String], let value = row[4] as? Double else { return nil }
            return Sample(family: family, type: type, name: name, labels: labels, value: value)
        }
    }

    @Test func theScrapeParsesAgreesWithTheDaemonAndHoldsNoSecret() async throws {
        guard FileManager.default.fileExists(atPath: Self.python) else {
            #expect(!Skip.report("metrics: \(Self.python) is missing (make test installs prometheus-client there)"))
            return
        }
        let port = try freeLoopbackPort()
        let running = try await RunningDaemon.start(access: "metrics: {listen: '127.0.0.1:\(port)'}\n")
        defer { running.stop() }
        let socket = running.dir.path("socket")
        let token = try #require(result(try RawSocketClient(socket).call(
            #"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#))?["token"] as? String)
        func scrape() throws -> String {
            try Command.check(["curl", "-sf", "http://127.0.0.1:\(port)/metrics"]).stdoutText
        }
        // The state gauges are refreshed every 2 s.
        try await Task.sleep(for: .milliseconds(2_500))
        let text = try scrape()
        let samples = try Self.parse(text, in: running.dir)
        let families = Set(samples.map(\.family))
        for family in ["bunq_sessiond_build_info", "bunq_sessiond_contexts", "bunq_sessiond_session_expiry_timestamp_seconds",
                       "bunq_sessiond_renewals", "bunq_sessiond_rpc_requests", "bunq_sessiond_rpc_connections",
                       "bunq_sessiond_bunq_requests", "bunq_sessiond_bunq_request_duration_seconds",
                       "bunq_sessiond_session_server_budget_utilisation", "bunq_sessiond_renewal_lag_seconds"] {
            #expect(families.contains(family), "\(family) is exposed")
        }
        #expect(samples.first { $0.family == "bunq_sessiond_renewals" }?.type == "counter")
        #expect(samples.first { $0.family == "bunq_sessiond_bunq_request_duration_seconds" }?.type == "histogram")

        let status = try #require(result(try RawSocketClient(socket).call(#"{"jsonrpc":"2.0","id":1,"method":"daemon.status"}"#)))
        let live = try #require((status["contexts"] as? [String: Any])?["live"] as? Int)
        let liveGauge = samples.filter { $0.name == "bunq_sessiond_contexts" && $0.labels["state"] == "live" }.map(\.value).reduce(0, +)
        #expect(Int(liveGauge) == live && live == 2, "contexts{state=\"live\"} = \(liveGauge), daemon.status: \(live)")
        let expiries = samples.filter { $0.name == "bunq_sessiond_session_expiry_timestamp_seconds" }
        #expect(Set(expiries.compactMap { $0.labels["context"] }) == ["provider", "ops"])
        #expect(expiries.allSatisfy { $0.value > Date().timeIntervalSince1970 }, "expiries lie in the future")
        let sessionGets = samples.first { $0.name == "bunq_sessiond_rpc_requests_total" && $0.labels["method"] == "session.get"
            && $0.labels["code"] == "0" }?.value ?? 0
        #expect(sessionGets >= 1)
        #expect(samples.contains { $0.name == "bunq_sessiond_bunq_requests_total" && $0.labels["endpoint"] == "session-server"
            && $0.labels["code"] == "200" })

        // A renewal counts once.
        func renewalsOK(_ samples: [Sample]) -> Double {
            samples.filter { $0.name == "bunq_sessiond_renewals_total" && $0.labels["result"] == "ok" && $0.labels["kind"] == "api_key" }
                .map(\.value).reduce(0, +)
        }
        let before = renewalsOK(samples)
        let renewed = try RawSocketClient(socket).call(#"{"jsonrpc":"2.0","id":1,"method":"session.renew","params":{"context":"ops","force":true}}"#)
        #expect(result(renewed)?["renewed"] as? Bool == true, "\(renewed)")
        let after = renewalsOK(try Self.parse(try scrape(), in: running.dir))
        #expect(after == before + 1, "renewals_total{result=\"ok\"}: \(before) → \(after)")

        // Nothing secret: not the token served, not the API key, no user in any label.
        let later = try scrape()
        #expect(!text.contains(token) && !later.contains(token))
        #expect(!later.contains(running.apiKey))
        #expect(try Self.parse(later, in: running.dir).allSatisfy { sample in
            !sample.labels.keys.contains { $0.contains("user") } && !sample.labels.values.contains(token)
        })
        #expect(try Command.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/other"])
            .stdoutText == "404")
        #expect(try Command.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "http://127.0.0.1:\(port)/metrics"])
            .stdoutText == "405")
    }

    @Test func theShippedAlertRulesPassPromtool() throws {
        guard FileManager.default.fileExists(atPath: "/usr/bin/promtool") else {
            #expect(!Skip.report("alert rules: promtool is missing (make deps installs Debian's prometheus)"))
            return
        }
        let rules = Self.repository.appendingPathComponent("contrib/prometheus")
        let check = try Command.run(["/usr/bin/promtool", "check", "rules", rules.appendingPathComponent("bunq-sessiond.rules.yml").path])
        #expect(check.status == 0 && check.stdoutText.contains("SUCCESS: 6 rules found"), "\(check.stdoutText)\(check.stderrText)")
        let unit = try Command.run(["/usr/bin/promtool", "test", "rules", "bunq-sessiond.rules.test.yml"], in: rules)
        #expect(unit.status == 0 && unit.stdoutText.contains("SUCCESS"), "\(unit.stdoutText)\(unit.stderrText)")
    }
}
