import Foundation
import TestThreads
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The socket protocol as DESIGN.md specifies it, spoken by a raw client to the real daemon.
@Suite(.ownThread) struct SocketProtocolTests {
    @Test func everyMethodAndErrorCode() async throws {
        let running = try await RunningDaemon.start()
        defer { running.stop() }
        let client = try RawSocketClient(running.socket)
        func call(_ id: Int, _ method: String, _ params: String = "{}") -> [String: Any] {
            client.call(#"{"jsonrpc":"2.0","id":\#(id),"method":"\#(method)","params":\#(params)}"#)
        }

        let session = try #require(result(call(1, "session.get", #"{"context":"ops"}"#)))
        #expect(Set(session.keys) == ["context", "token", "user_id", "expires_at", "renew_at", "generation", "server_public_key"])
        #expect((session["token"] as? String)?.count == 64)
        #expect((session["server_public_key"] as? String)?.hasPrefix("-----BEGIN PUBLIC KEY-----") == true)

        let signature = try #require(result(call(2, "request.sign", #"{"context":"ops","body":"{\"a\":1}"}"#))?["signature"] as? String)
        #expect(signature.count == 344)
        let signatureB64 = result(call(3, "request.sign", #"{"context":"ops","body_base64":"eyJhIjoxfQ=="}"#))?["signature"] as? String
        #expect(signatureB64 == signature, "body and body_base64 sign the same bytes")

        // Just renewed at start: a plain session.renew returns the current session; an admin may force one.
        let recent = try #require(result(call(4, "session.renew", #"{"context":"ops"}"#)))
        #expect(recent["renewed"] as? Bool == false && recent["generation"] as? Int == 1)
        let renewed = try #require(result(call(4, "session.renew", #"{"context":"ops","force":true}"#)))
        #expect((renewed["generation"] as? Int ?? 0) >= 2 && renewed["expires_at"] is String && renewed["renewed"] as? Bool == true)
        let after = try #require(result(call(5, "session.get", #"{"context":"ops"}"#)))
        #expect(after["token"] as? String != session["token"] as? String, "the renewed token is served")

        let list = try #require(result(call(6, "context.list"))?["contexts"] as? [[String: Any]])
        #expect(list.compactMap { $0["name"] as? String } == ["ops", "provider"])
        #expect(list.allSatisfy { Set($0.keys) == ["name", "kind", "state", "user_id", "expires_at", "renew_at"] })

        let status = try #require(result(call(7, "context.status", #"{"context":"provider"}"#)))
        for key in ["state", "expires_at", "renew_at", "last_renewed_at", "consecutive_failures", "next_retry_at", "last_error"] {
            #expect(status.keys.contains(key), "context.status has \(key)")
        }
        let daemon = try #require(result(call(8, "daemon.status")))
        #expect(daemon["ready"] as? Bool == true && daemon["version"] is String)
        #expect((daemon["contexts"] as? [String: Any])?["total"] as? Int == 2)

        let authorize = try #require(result(call(9, "oauth.authorize_url")))
        #expect((authorize["url"] as? String)?.contains("/auth?") == true && (authorize["state"] as? String)?.count == 32)
        #expect(errorCode(call(10, "oauth.complete", #"{"code":"x","state":"not-issued"}"#)) == 1006)

        // Errors: parse, invalid request, method, params, unknown context.
        client.send("{\"jsonrpc\":\"2.0\",\"id\":11,")
        #expect(client.readLine().map { $0.contains("-32700") } == true)
        #expect(errorCode(client.call(#"{"jsonrpc":"1.0","id":12,"method":"daemon.status"}"#)) == -32600)
        #expect(errorCode(client.call(#"[{"jsonrpc":"2.0","id":13,"method":"daemon.status"}]"#)) == -32600)
        #expect(errorCode(client.call(#"{"jsonrpc":"2.0","id":14,"method":"session.steal"}"#)) == -32601)
        #expect(errorCode(call(15, "session.get", #"{"ctx":"ops"}"#)) == -32602)
        #expect(errorCode(client.call(#"{"jsonrpc":"2.0","id":16,"method":"session.get","params":[1]}"#)) == -32602)
        #expect(errorCode(call(17, "session.get", #"{"context":"ghost"}"#)) == 1001)
        #expect(errorCode(call(18, "request.sign", #"{"context":"ops","body_base64":"***"}"#)) == -32602)
        // A notification (no id) gets no answer; the next request still does.
        client.send(#"{"jsonrpc":"2.0","method":"daemon.status"}"#)
        #expect(result(call(19, "daemon.status")) != nil)

        // Pipelining: several requests in one write, one answer each, matched by id.
        client.send((20..<30).map { #"{"jsonrpc":"2.0","id":\#($0),"method":"session.get","params":{"context":"ops"}}"# }
            .joined(separator: "\n"))
        var ids: Set<Int> = []
        for _ in 20..<30 {
            if let line = client.readLine(), let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
               let id = object["id"] as? Int { ids.insert(id) }
        }
        #expect(ids == Set(20..<30))

        // Removal (admin: root here) ends the context.
        #expect(result(call(31, "context.remove", #"{"context":"ops"}"#)) != nil)
        #expect(errorCode(call(32, "session.get", #"{"context":"ops"}"#)) == 1001)
        #expect(!running.daemon.log.contains(session["token"] as? String ?? "-"), "tokens never reach the log")
    }

    @Test func hostileInputNeverDisturbsOtherConnections() async throws {
        let running = try await RunningDaemon.start(provider: false)
        defer { running.stop() }
        let bystander = try RawSocketClient(running.socket)
        func bystanderWorks() -> Bool {
            result(bystander.call(#"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#)) != nil
        }
        #expect(bystanderWorks())

        // Invalid UTF-8 and deep nesting: errors, the connection lives on.
        let garbled = try RawSocketClient(running.socket)
        garbled.send([0xFF, 0xFE, 0x7B, 0x80, 0x0A])
        #expect(garbled.readLine().map { $0.contains("-32700") } == true)
        garbled.send(String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000))
        #expect(garbled.readLine().map { $0.contains("\"error\"") } == true)
        #expect(result(garbled.call(#"{"jsonrpc":"2.0","id":2,"method":"daemon.status"}"#)) != nil)

        // A 10 MB line: -32600, then the connection is closed.
        let flooder = try RawSocketClient(running.socket)
        flooder.send([UInt8](repeating: UInt8(ascii: "a"), count: 10 << 20))
        #expect(flooder.readLine(timeout: 20).map { $0.contains("-32600") } == true)
        #expect(flooder.isClosed(timeout: 20))

        // A thousand idle connections, and a client that sends a lot but never reads.
        var idle: [RawSocketClient] = []
        for _ in 0..<1_000 { idle.append(try RawSocketClient(running.socket)) }
        let deaf = try RawSocketClient(running.socket)
        let request = Array(String(repeating: #"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"# + "\n",
                                   count: 2_000).utf8)
        var flags = fcntl(deaf.fd, F_GETFL)
        flags |= O_NONBLOCK
        _ = fcntl(deaf.fd, F_SETFL, flags)
        for _ in 0..<200 { _ = request.withUnsafeBytes { Glibc.send(deaf.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
        #expect(bystanderWorks(), "the daemon still answers others")
        idle.removeAll()
        #expect(bystanderWorks())
        #expect(running.daemon.process.isRunning)
    }

    @Test func idleConnectionsCloseSubscribersStayAndConnectionsAreBounded() async throws {
        // root is not an admin here: admins get a reserve beyond max_connections, which this test is not about.
        let running = try await RunningDaemon.start(access: """
            socket: {max_connections: 5, max_connections_per_uid: 10, idle_timeout: 1}
            access:
              admin: {users: [nobody]}
              contexts: {"*": {users: [root]}}
            """, provider: false, socketInConfig: true)
        defer { running.stop() }
        let idle = try RawSocketClient(running.socket)
        let subscriber = try RawSocketClient(running.socket)
        #expect(result(subscriber.call(#"{"jsonrpc":"2.0","id":1,"method":"session.subscribe","params":{}}"#)) != nil)
        #expect(idle.isClosed(timeout: 5), "an idle connection is closed after idle_timeout")
        try await Task.sleep(for: .seconds(2))
        #expect(result(subscriber.call(#"{"jsonrpc":"2.0","id":2,"method":"daemon.status"}"#)) != nil, "subscribers stay")

        // Five at once are served (subscribers, so the idle timeout spares them); the sixth is told and closed.
        var clients = [subscriber]
        for _ in 0..<4 {
            let client = try RawSocketClient(running.socket)
            #expect(result(client.call(#"{"jsonrpc":"2.0","id":1,"method":"session.subscribe","params":{}}"#)) != nil)
            clients.append(client)
        }
        let extra = try RawSocketClient(running.socket)
        #expect(extra.readLine(timeout: 5).map { $0.contains("Too many connections") } == true)
        #expect(extra.isClosed())
        // bunq-sessionctl says the daemon is busy and exits 69 (unavailable), not a protocol error.
        let busy = try Command.run([Binaries.directory.appendingPathComponent("bunq-sessionctl").path, "status",
                                    "--socket", running.socket])
        #expect(busy.status == 69 && busy.stderrText.contains("daemon busy"), "\(busy.status): \(busy.stderrText)")
        #expect(clients.allSatisfy { result($0.call(#"{"jsonrpc":"2.0","id":3,"method":"daemon.status"}"#)) != nil })
    }

    @Test func subscriptionsDeliverRotations() async throws {
        let running = try await RunningDaemon.start(sessionTimeout: 10, provider: false)
        defer { running.stop() }
        let subscriber = try RawSocketClient(running.socket)
        let subscribed = result(subscriber.call(#"{"jsonrpc":"2.0","id":1,"method":"session.subscribe","params":{}}"#))
        #expect(subscribed?["subscribed"] as? [String] == ["ops"])
        var generations: [Int] = []
        while generations.count < 2, let line = subscriber.readLine(timeout: 30) {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  object["method"] as? String == "session.rotated", object["id"] == nil,
                  let params = object["params"] as? [String: Any] else { continue }
            #expect(params["context"] as? String == "ops" && (params["token"] as? String)?.count == 64)
            generations.append(params["generation"] as? Int ?? 0)
        }
        #expect(generations.count == 2 && generations[1] == generations[0] + 1, "rotations arrive in order: \(generations)")
    }

    @Test func accessControlUsesRealUidsAndGroups() async throws {
        guard getuid() == 0 else {
            #expect(!Skip.report("accessControlUsesRealUidsAndGroups: needs root to create users and drop privileges (runs in CI)"))
            return
        }
        let suffix = String(UInt32.random(in: 1_000...9_999))
        let (socketGroup, apps, alice, bob, mallory) = ("bsd-sock\(suffix)", "bsd-apps\(suffix)", "bsd-a\(suffix)",
                                                       "bsd-b\(suffix)", "bsd-m\(suffix)")
        try Command.check(["groupadd", socketGroup])
        try Command.check(["groupadd", apps])
        for user in [alice, bob, mallory] { try Command.check(["useradd", "-M", "-G", socketGroup, user]) }
        try Command.check(["usermod", "-aG", apps, alice])  // a supplementary group
        defer {
            for user in [alice, bob, mallory] { _ = try? Command.run(["userdel", user]) }
            _ = try? Command.run(["groupdel", apps])
            _ = try? Command.run(["groupdel", socketGroup])
        }
        let running = try await RunningDaemon.start(access: """
            access:
              admin: {users: [root]}
              contexts:
                "*": {groups: [\(apps)]}
                ops: {users: [\(bob)]}
            """)
        defer { running.stop() }
        chmod(running.dir.url.path, 0o755)
        try Command.check(["chgrp", socketGroup, running.socket])

        /// One request as `user`, through a client process running with that user's uid and groups.
        func request(as user: String, _ line: String) throws -> [String: Any] {
            let script = "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                + "s.sendall(sys.argv[2].encode()+b'\\n'); print(s.makefile().readline())"
            let output = try Command.run(["setpriv", "--reuid=\(user)", "--regid=\(user)", "--init-groups",
                                          "/usr/bin/python3", "-c", script, running.socket, line])
            return (try? JSONSerialization.jsonObject(with: output.stdout) as? [String: Any]) ?? ["stderr": output.stderrText]
        }
        let getOps = #"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#
        let getProvider = #"{"jsonrpc":"2.0","id":2,"method":"session.get","params":{"context":"provider"}}"#
        let remove = #"{"jsonrpc":"2.0","id":3,"method":"context.remove","params":{"context":"ops"}}"#
        let authorize = #"{"jsonrpc":"2.0","id":4,"method":"oauth.authorize_url","params":{}}"#
        let list = #"{"jsonrpc":"2.0","id":5,"method":"context.list","params":{}}"#

        // alice: every context through a supplementary group, but no admin methods.
        #expect(result(try request(as: alice, getOps)) != nil)
        #expect(result(try request(as: alice, getProvider)) != nil)
        #expect(errorCode(try request(as: alice, remove)) == 1002)
        #expect(errorCode(try request(as: alice, authorize)) == 1002)
        // bob: ops by name; provider answers exactly like a context that does not exist.
        #expect(result(try request(as: bob, getOps)) != nil)
        let hidden = try request(as: bob, getProvider)
        #expect(errorCode(hidden) == 1001)
        #expect((hidden["error"] as? [String: Any])?["message"] as? String == "Unknown context: provider")
        #expect((result(try request(as: bob, list))?["contexts"] as? [[String: Any]])?.count == 1)
        // mallory: may connect, may use nothing.
        #expect(errorCode(try request(as: mallory, getOps)) == 1001)
        #expect((result(try request(as: mallory, list))?["contexts"] as? [[String: Any]])?.isEmpty == true)
        #expect(running.daemon.log.contains("token granted to a new caller"), "first grants are logged")
    }
}
