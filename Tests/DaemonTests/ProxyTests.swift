import Foundation
import TestThreads
import Testing
import TestSupport

/// The bunq API proxy (issue 16), end to end: the real daemon on its proxy socket, the real sandbox with its rate
/// limits on, curl and Python's http.client as the applications.
@Suite(.ownThread) struct ProxyTests {
    static let loadScript = Binaries.directory.deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Tests/proxy/proxy_load.py").path

    /// One proxied request through curl: status, headers (names lowercased) and the body's exact bytes.
    struct Reply {
        let status: Int
        let headers: [String: String]
        let body: Data
        var json: [String: Any]? { try? JSONSerialization.jsonObject(with: body) as? [String: Any] }
        var error: String? { headers["x-bunq-sessiond-error"] }
    }

    static func request(_ socket: String, _ dir: TemporaryDirectory, _ path: String, method: String = "GET",
                        context: String? = "ops", body: String? = nil, extra: [String] = [], as user: String? = nil) throws -> Reply {
        let tag = UUID().uuidString
        let (headerFile, bodyFile) = (dir.path("h-\(tag)"), dir.path("b-\(tag)"))
        var arguments = ["curl", "-s", "--unix-socket", socket, "-X", method, "-D", headerFile, "-o", bodyFile,
                         "-w", "%{http_code}"]
        if let context { arguments += ["-H", "X-Bunq-Context: \(context)"] }
        if let body { arguments += ["-H", "Content-Type: application/json", "--data-binary", body] }
        arguments += extra + ["http://localhost" + path]
        if let user {
            // curl runs as `user` and writes where that user may: the files are made for it first.
            for file in [headerFile, bodyFile] { _ = FileManager.default.createFile(atPath: file, contents: nil) }
            try Command.check(["chown", user, headerFile, bodyFile])
            arguments = ["setpriv", "--reuid=\(user)", "--regid=\(user)", "--clear-groups"] + arguments
        }
        let status = Int(try Command.check(arguments).stdoutText) ?? -1
        let headerText = (try? String(contentsOfFile: headerFile, encoding: .utf8)) ?? ""
        var headers: [String: String] = [:]
        for line in headerText.split(separator: "\r\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return Reply(status: status, headers: headers, body: FileManager.default.contents(atPath: bodyFile) ?? Data())
    }

    static func start(_ proxy: String, limits: Limits = .scaled(0.1), provider: Bool = false, access: String = "") async throws
        -> (RunningDaemon, String) {
        let running = try await RunningDaemon.start(access: proxy + "\n" + access, provider: provider, limits: limits)
        return (running, running.dir.path("proxy.sock"))
    }

    /// The path of `user`'s first object (`GET /v1/user`), for the URLs that need it.
    static func userId(_ reply: Reply) -> Int? {
        ((reply.json?["Response"] as? [[String: Any]])?.first?.values.first as? [String: Any])?["id"] as? Int
    }

    @Test func forwardsSignedRequestsVerifiesRepliesAndRenewsOnARefusedSession() async throws {
        guard getuid() == 0 else {
            #expect(!Skip.report("forwardsSignedRequests: needs root to create a caller without access (runs in CI)"))
            return
        }
        let user = "bsd-p\(UInt32.random(in: 1_000...9_999))"
        try Command.check(["useradd", "-M", user])
        defer { _ = try? Command.run(["userdel", user]) }
        let port = try freeLoopbackPort()
        let (running, socket) = try await Self.start("""
            proxy:
              socket: \(RunningDaemonPaths.proxy)
              timeout: 5
            metrics: {listen: '127.0.0.1:\(port)'}
            """)
        defer { running.stop() }
        let dir = running.dir

        // GET: bunq's status and body, byte for byte: bunq's signature verifies over exactly what the client got.
        let user1 = try Self.request(socket, dir, "/v1/user")
        #expect(user1.status == 200, "\(String(decoding: user1.body, as: UTF8.self))")
        #expect(user1.headers["x-bunq-sessiond-context"] == "ops")
        let generation = Int(user1.headers["x-bunq-sessiond-generation"] ?? "") ?? -1
        #expect(generation >= 1)
        let session = result(try RawSocketClient(running.socket)
            .call(#"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#))
        let serverKey = try #require(session?["server_public_key"] as? String)
        _ = try dir.write("server.pem", serverKey)
        let signature = try #require(user1.headers["x-bunq-server-signature"].flatMap { Data(base64Encoded: $0) })
        try signature.write(to: dir.url.appendingPathComponent("reply.sig"))
        try user1.body.write(to: dir.url.appendingPathComponent("reply.body"))
        let verify = try Command.run(["openssl", "dgst", "-sha256", "-verify", dir.path("server.pem"), "-signature",
                                      dir.path("reply.sig"), dir.path("reply.body")])
        #expect(verify.status == 0 && verify.stdoutText.contains("Verified OK"), "\(verify.stdoutText)\(verify.stderrText)")
        #expect(!user1.headers.keys.contains("x-bunq-client-authentication"))
        let userId = try #require(Self.userId(user1))

        // POST with bodies: an OAuth client, then a callback URL on it (a chunked body); the sandbox checks the
        // signature over each body, and lists what was created.
        let created = try Self.request(socket, dir, "/v1/user/\(userId)/oauth-client", method: "POST", body: #"{"status":"ACTIVE"}"#)
        #expect(created.status == 200, "\(String(decoding: created.body, as: UTF8.self))")
        let clientId = try #require(((created.json?["Response"] as? [[String: Any]])?.first?["Id"] as? [String: Any])?["id"] as? Int)
        let callback = try Self.request(socket, dir, "/v1/user/\(userId)/oauth-client/\(clientId)/callback-url", method: "POST",
                                        body: #"{"url":"https://example.com/proxied"}"#, extra: ["-H", "Transfer-Encoding: chunked"])
        #expect(callback.status == 200, "\(String(decoding: callback.body, as: UTF8.self))")
        let listed = try Self.request(socket, dir, "/v1/user/\(userId)/oauth-client/\(clientId)/callback-url")
        #expect(String(decoding: listed.body, as: UTF8.self).contains("example.com\\/proxied")
                || String(decoding: listed.body, as: UTF8.self).contains("example.com/proxied"))
        #expect(try running.sandbox.stat("rejected_signatures") == 0)

        // One injected "Insufficient authentication.": the client sees 200, in a newer session.
        _ = try running.sandbox.admin("POST", "faults",
                                      #"{"endpoint":"GET /v1/user","status":401,"error":"Insufficient authentication.","count":1}"#)
        let renewed = try Self.request(socket, dir, "/v1/user")
        #expect(renewed.status == 200, "\(String(decoding: renewed.body, as: UTF8.self))")
        #expect((Int(renewed.headers["x-bunq-sessiond-generation"] ?? "") ?? 0) > generation)
        // A refusal that is not about the session is passed on as bunq gave it, and not retried.
        _ = try running.sandbox.admin("POST", "faults", #"{"endpoint":"POST /v1/user/*/oauth-client","status":400,"count":1}"#)
        let posts = try running.sandbox.requests("POST /v1/user/{userID}/oauth-client")
        let refused = try Self.request(socket, dir, "/v1/user/\(userId)/oauth-client", method: "POST", body: #"{"status":"ACTIVE"}"#)
        #expect(refused.status == 400 && refused.error == nil)
        #expect(try running.sandbox.requests("POST /v1/user/{userID}/oauth-client") == posts + 1)

        // The proxy's own answers: bunq's error shape and the code.
        let missing = try Self.request(socket, dir, "/v1/user", context: nil)
        #expect(missing.status == 400 && missing.error == "missing_context")
        #expect(((missing.json?["Error"] as? [[String: Any]])?.first?["error_description"] as? String)?.isEmpty == false)
        let unknown = try Self.request(socket, dir, "/v1/user", context: "nope")
        #expect(unknown.status == 403 && unknown.error == "unknown_context")
        chmod(dir.url.path, 0o755)
        chmod(socket, 0o666)
        let forbidden = try Self.request(socket, dir, "/v1/user", context: "ops", as: user)
        let forbiddenUnknown = try Self.request(socket, dir, "/v1/user", context: "nope", as: user)
        #expect(forbidden.status == 403 && forbidden.error == "unknown_context")
        #expect(String(decoding: forbidden.body, as: UTF8.self).replacingOccurrences(of: "ops", with: "nope")
                == String(decoding: forbiddenUnknown.body, as: UTF8.self), "forbidden and unknown read alike")
        let notProxied = try Self.request(socket, dir, "/v1/session-server", method: "POST", body: "{}")
        #expect(notProxied.status == 403 && notProxied.error == "endpoint_not_proxied")
        // No way around that check: dot segments (which libcurl would resolve) and percent-encoding (which a
        // server might decode) are refused, as are methods bunq does not take.
        let sessionServerPosts = try running.sandbox.requests("POST /v1/session-server")
        for path in ["/v1/user/../session-server", "/v1/./session-server", "/v1/%73ession-server", "/v1//user", "/v2/user"] {
            let sneaky = try Self.request(socket, dir, path, method: "POST", body: "{}", extra: ["--path-as-is"])
            #expect(sneaky.status == 400 && sneaky.error == "invalid_path", "\(path)")
        }
        #expect(try running.sandbox.requests("POST /v1/session-server") == sessionServerPosts)
        let patch = try Self.request(socket, dir, "/v1/user", method: "PATCH")
        #expect(patch.status == 405 && patch.error == "method_not_allowed")

        // More GETs of one endpoint at once than bunq's limit lets through within proxy.timeout: the rest are
        // told when to come back, and bunq never answers 429.
        let load = try ChildProcess("/usr/bin/python3", [Self.loadScript, "concurrent", socket, "ops", "/v1/user/\(userId)", "60"],
                                    log: dir.path("load.log"))
        defer { _ = load.stop(signal: SIGKILL) }
        #expect(await load.waitFor(.seconds(60)) { $0.contains("\"elapsed\"") }, "\(load.log)")
        let replies = (try JSONSerialization.jsonObject(with: Data(load.log.utf8)) as? [String: Any])?["replies"] as? [[String: Any]] ?? []
        let ok = replies.filter { $0["status"] as? Int == 200 }.count
        let waits = replies.filter { $0["error"] as? String == "rate_limit_wait" }
        #expect(ok >= 15 && !waits.isEmpty && ok + waits.count == 60, "\(load.log)")
        #expect(waits.allSatisfy { Int($0["retry_after"] as? String ?? "") ?? 0 >= 1 })
        #expect(try running.sandbox.stat("rate_limited") == 0)
        // Counted by endpoint template, method and status; the waits in a histogram.
        let scrape = try Command.check(["curl", "-s", "http://127.0.0.1:\(port)/metrics"]).stdoutText
        let counted = scrape.split(separator: "\n").filter { $0.hasPrefix("bunq_sessiond_proxy_requests_total{") }
        #expect(counted.contains { $0.contains(#"endpoint="user/{id}""#) && $0.contains(#"code="503""#) }, "\(counted)")
        #expect(counted.contains { $0.contains(#"endpoint="user/{id}/oauth-client""#) && $0.contains(#"method="POST""#)
            && $0.contains(#"code="200""#) }, "\(counted)")
        #expect(scrape.contains("bunq_sessiond_proxy_wait_seconds_count"))
        #expect(!scrape.contains(String(userId)), "no id in a label")
        // The audit record: method, templated path, status, never a token or a query string.
        let log = running.daemon.log
        #expect(log.contains("bunq.path=/v1/user/{id}/oauth-client/{id}/callback-url"))
        #expect(log.contains("bunq.context=ops") && log.contains("bunq.peer_uid=0") && log.contains("bunq.waited_ms="))
        let token = try #require(session?["token"] as? String)
        #expect(!log.contains(token) && !log.contains(user1.headers["x-bunq-server-signature"] ?? "-"))
    }

    @Test func hostileClientsDisturbNeitherOtherClientsNorTheTokenSocket() async throws {
        guard getuid() == 0 else {
            #expect(!Skip.report("hostileClients: needs root to run a second uid (runs in CI)"))
            return
        }
        let user = "bsd-h\(UInt32.random(in: 1_000...9_999))"
        try Command.check(["useradd", "-M", user])
        defer { _ = try? Command.run(["userdel", user]) }
        let (running, socket) = try await Self.start("""
            proxy:
              socket: \(RunningDaemonPaths.proxy)
              max_body_bytes: 4096
              max_connections: 2000
              max_connections_per_uid: 1100
              idle_timeout: 6
            """)
        defer { running.stop() }
        let dir = running.dir
        chmod(dir.url.path, 0o755)
        chmod(socket, 0o666)
        // The other uid runs the load script (and the Python client it imports, found beside it as in the
        // checkout) from here: the checkout may sit where it cannot read, a 0700 home.
        let checkout = Binaries.directory.deletingLastPathComponent().deletingLastPathComponent().path
        let loadScript = dir.path("Tests/proxy/proxy_load.py")
        try Command.check(["mkdir", "-p", dir.path("Tests/proxy"), dir.path("clients/python")])
        try Command.check(["cp", Self.loadScript, loadScript])
        try Command.check(["cp", "-r", checkout + "/clients/python/bunq_sessiond", dir.path("clients/python/")])
        try Command.check(["chmod", "-R", "a+rX", dir.path("Tests"), dir.path("clients")])

        // Oversize header section and body: specific answers, and the daemon goes on.
        let header = try Self.request(socket, dir, "/v1/user", extra: ["-H", "X-Filler: " + String(repeating: "a", count: 20_000)])
        #expect(header.status == 431 && header.error == "header_too_large")
        let big = try Self.request(socket, dir, "/v1/user", method: "POST", body: String(repeating: "x", count: 10_000))
        #expect(big.status == 413 && big.error == "body_too_large")
        let chunked = try Self.request(socket, dir, "/v1/user", method: "POST", body: String(repeating: "x", count: 10_000),
                                       extra: ["-H", "Transfer-Encoding: chunked"])
        #expect(chunked.status == 413 && chunked.error == "body_too_large")

        // A client that never reads its answers, and 1,000 idle connections of another uid.
        let nonreader = try ChildProcess("/usr/bin/python3", [loadScript, "nonreader", socket, "200000"],
                                         log: dir.path("nonreader.log"))
        defer { _ = nonreader.stop(signal: SIGKILL) }
        let idle = try ChildProcess("/usr/bin/setpriv", ["--reuid=\(user)", "--regid=\(user)", "--clear-groups",
                                                         "/usr/bin/python3", loadScript, "idle", socket, "1000"],
                                    log: dir.path("idle.log"))
        defer { _ = idle.stop(signal: SIGKILL) }
        #expect(await idle.waitFor(.seconds(30)) { $0.contains("opened") }, "\(idle.log)")
        #expect(idle.log.contains("opened 1000 refused 0"), "\(idle.log)")
        #expect(await nonreader.waitFor(.seconds(30)) { $0.contains("sent") }, "\(nonreader.log)")

        // Meanwhile: proxied requests and tokens as usual.
        for _ in 0..<5 {
            let started = ContinuousClock.now
            let reply = try Self.request(socket, dir, "/v1/user")
            #expect(reply.status == 200)
            #expect(ContinuousClock.now - started < .seconds(2))
            let token = result(try RawSocketClient(running.socket)
                .call(#"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#))
            #expect(token?["token"] as? String != nil)
        }
        // The idle connections are closed after proxy.idle_timeout; the one that does not read, after the send
        // timeout at the latest (it is not read meanwhile, so it holds no more than its buffers).
        #expect(await idle.waitFor(.seconds(20)) { $0.contains("closed 1000") }, "\(idle.log)")
        // Over the per-uid limit: refused at once with the proxy's answer.
        let crowd = try ChildProcess("/usr/bin/setpriv", ["--reuid=\(user)", "--regid=\(user)", "--clear-groups",
                                                          "/usr/bin/python3", loadScript, "idle", socket, "1200", "100"],
                                     log: dir.path("crowd.log"))
        defer { _ = crowd.stop(signal: SIGKILL) }
        #expect(await crowd.waitFor(.seconds(30)) { $0.contains("opened") }, "\(crowd.log)")
        #expect(crowd.log.contains("opened 1100 refused 100"), "\(crowd.log)")
        #expect(try Self.request(socket, dir, "/v1/user").status == 200)
        #expect(running.daemon.process.isRunning)
    }

    @Test func concurrentRequestsArePacedWithinBunqsLimits() async throws {
        // bunq's own limits, unscaled: GET 3 per 3 s per endpoint.
        let (running, socket) = try await Self.start("""
            proxy:
              socket: \(RunningDaemonPaths.proxy)
            """, limits: .bunq)
        defer { running.stop() }
        let user = try Self.request(socket, running.dir, "/v1/user")
        let userId = try #require(Self.userId(user))
        let load = try ChildProcess("/usr/bin/python3", [Self.loadScript, "concurrent", socket, "ops",
                                                         "/v1/user/\(userId)/monetary-account", "12"],
                                    log: running.dir.path("load.log"))
        defer { _ = load.stop(signal: SIGKILL) }
        #expect(await load.waitFor(.seconds(60)) { $0.contains("\"elapsed\"") }, "\(load.log)")
        let report = try JSONSerialization.jsonObject(with: Data(load.log.utf8)) as? [String: Any]
        let replies = report?["replies"] as? [[String: Any]] ?? []
        #expect(replies.count == 12 && replies.allSatisfy { $0["status"] as? Int == 200 }, "\(load.log)")
        #expect((report?["elapsed"] as? Double ?? 0) >= 8, "\(load.log)")
        #expect(try running.sandbox.stat("rate_limited") == 0)
    }
}

/// Where the proxy's socket is in a test's directory (the config's `proxy.socket`).
enum RunningDaemonPaths {
    /// Substituted into the configuration by `RunningDaemon.start` (its directory is made there).
    static let proxy = "DIR/proxy.sock"
}
