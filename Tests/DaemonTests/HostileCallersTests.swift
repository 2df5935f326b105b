import Foundation
import TestThreads
import Testing
import TestSupport

/// Local callers as a hostile one would act (issue 13, first part): revocation reaches live subscriptions, a
/// caller cannot spend the session-server budget by asking for renewals, and `daemon.status` shows a caller only
/// what it may see. Real uids and groups, created by the test (CI runs as root).
@Suite(.ownThread) struct HostileCallersTests {
    @Test func revocationEndsALiveSubscriptionAndStatusShowsOnlyWhatACallerMaySee() async throws {
        guard getuid() == 0 else {
            #expect(!Skip.report("revocationEndsALiveSubscription: needs root to create a user (runs in CI)"))
            return
        }
        let user = "bsd-r\(UInt32.random(in: 1_000...9_999))"
        try Command.check(["useradd", "-M", user])
        defer { _ = try? Command.run(["userdel", user]) }
        let running = try await RunningDaemon.start(access: """
            access:
              admin: {users: [root]}
              contexts:
                ops: {users: [\(user)]}
            """)
        defer { running.stop() }
        chmod(running.dir.url.path, 0o755)
        chmod(running.socket, 0o666)

        // The user's status counts only ops; root's counts both.
        let status = """
            import json,socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
            s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"daemon.status"}\\n'); print(s.makefile().readline())
            """
        let mine = try Command.check(["setpriv", "--reuid=\(user)", "--regid=\(user)", "--clear-groups", "/usr/bin/python3",
                                      "-c", status, running.socket]).stdout
        let contexts = (try JSONSerialization.jsonObject(with: mine) as? [String: Any]).flatMap { result($0) }?["contexts"]
            as? [String: Any]
        #expect(contexts?["total"] as? Int == 1 && contexts?["live"] as? Int == 1, "\(String(decoding: mine, as: UTF8.self))")
        let all = result(try RawSocketClient(running.socket).call(#"{"jsonrpc":"2.0","id":1,"method":"daemon.status"}"#))
        #expect((all?["contexts"] as? [String: Any])?["total"] as? Int == 2)

        // The user subscribes to ops and keeps reading every line it is sent.
        let subscriber = """
            import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
            s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"session.subscribe","params":{"context":"ops"}}\\n')
            f=s.makefile()
            for line in f: print(line.strip(), flush=True)
            """
        let watcher = try ChildProcess("/usr/bin/setpriv", ["--reuid=\(user)", "--regid=\(user)", "--clear-groups",
                                                            "/usr/bin/python3", "-c", subscriber, running.socket],
                                       log: running.dir.path("subscriber.log"))
        defer { _ = watcher.stop(signal: SIGKILL) }
        #expect(await watcher.waitFor(.seconds(10)) { $0.contains(#""subscribed":["ops"]"#) }, "\(watcher.log)")
        let admin = try RawSocketClient(running.socket)
        // A forced renewal (admins only) reaches the subscriber while it is allowed.
        #expect(result(admin.call(#"{"jsonrpc":"2.0","id":2,"method":"session.renew","params":{"context":"ops","force":true}}"#))?["renewed"]
                as? Bool == true)
        #expect(await watcher.waitFor(.seconds(10)) { $0.contains("session.rotated") }, "\(watcher.log)")

        // Revoked by a reload: the subscription ends with `forbidden`, and the next token does not reach it.
        let config = try String(contentsOfFile: running.config, encoding: .utf8)
        try Data(config.replacingOccurrences(of: "ops: {users: [\(user)]}", with: "ops: {users: [root]}").utf8)
            .write(to: URL(fileURLWithPath: running.config))
        kill(running.daemon.process.processIdentifier, SIGHUP)
        #expect(await watcher.waitFor(.seconds(10)) { $0.contains(#""state":"forbidden""#) }, "\(watcher.log)")
        let renewed = result(admin.call(#"{"jsonrpc":"2.0","id":3,"method":"session.renew","params":{"context":"ops","force":true}}"#))
        #expect(renewed?["renewed"] as? Bool == true)
        try await Task.sleep(for: .seconds(1))
        let lines = watcher.log.split(separator: "\n")
        let forbiddenAt = lines.firstIndex { $0.contains(#""state":"forbidden""#) } ?? lines.count
        #expect(!lines[forbiddenAt...].contains { $0.contains("session.rotated") }, "no token after the revocation: \(watcher.log)")
        #expect(lines.filter { $0.contains("session.rotated") }.count == 1)
    }

    @Test func groupsAreTheCallingProcesssNotTheUserDatabases() async throws {
        guard getuid() == 0 else {
            #expect(!Skip.report("groupsAreTheCallingProcesss: needs root to create users and groups (runs in CI)"))
            return
        }
        let suffix = String(UInt32.random(in: 1_000...9_999))
        let (group, outsider, member) = ("bsd-g\(suffix)", "bsd-o\(suffix)", "bsd-i\(suffix)")
        try Command.check(["groupadd", group])
        try Command.check(["useradd", "-M", outsider])
        try Command.check(["useradd", "-M", "-G", group, member])
        defer {
            for user in [outsider, member] { _ = try? Command.run(["userdel", user]) }
            _ = try? Command.run(["groupdel", group])
        }
        let running = try await RunningDaemon.start(access: """
            access:
              admin: {users: [root]}
              contexts:
                ops: {groups: [\(group)]}
            """, provider: false)
        defer { running.stop() }
        chmod(running.dir.url.path, 0o755)
        chmod(running.socket, 0o666)
        func get(_ user: String, _ groups: [String]) throws -> Int? {
            let script = "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                + #"s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}\n'); "#
                + "print(s.makefile().readline())"
            let output = try Command.check(["setpriv", "--reuid=\(user)", "--regid=\(user)"] + groups
                                           + ["/usr/bin/python3", "-c", script, running.socket])
            let answer = try JSONSerialization.jsonObject(with: output.stdout) as? [String: Any]
            return answer.flatMap { result($0) } != nil ? 0 : answer.flatMap(errorCode)
        }
        // Given the group at exec only (as systemd's SupplementaryGroups= does): allowed.
        #expect(try get(outsider, ["--groups=\(group)"]) == 0)
        // A member by the user database whose process dropped the group: refused, at once.
        #expect(try get(member, ["--clear-groups"]) == 1001)
        #expect(try get(member, ["--init-groups"]) == 0)
        #expect(try get(outsider, ["--clear-groups"]) == 1001)
    }

    @Test func oneUserCannotFillTheSocketAndRootAlwaysGetsIn() async throws {
        guard getuid() == 0 else {
            #expect(!Skip.report("oneUserCannotFillTheSocket: needs root to create a user (runs in CI)"))
            return
        }
        let user = "bsd-f\(UInt32.random(in: 1_000...9_999))"
        try Command.check(["useradd", "-M", user])
        defer { _ = try? Command.run(["userdel", user]) }
        let running = try await RunningDaemon.start(access: "socket: {max_connections: 4, max_connections_per_uid: 2}",
                                                    provider: false, socketInConfig: true)
        defer { running.stop() }
        chmod(running.dir.url.path, 0o755)
        chmod(running.socket, 0o666)
        // The user opens three connections and holds them: two are served, the third is refused.
        let flood = """
            import socket,sys,time
            held=[]
            for i in range(3):
                s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); held.append(s)
                try: s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"daemon.status"}\\n')
                except OSError: pass  # a refused connection is answered and closed at once
                print(s.makefile().readline().strip(), flush=True)
            time.sleep(60)
            """
        let holder = try ChildProcess("/usr/bin/setpriv", ["--reuid=\(user)", "--regid=\(user)", "--clear-groups",
                                                           "/usr/bin/python3", "-c", flood, running.socket],
                                      log: running.dir.path("flood.log"))
        defer { _ = holder.stop(signal: SIGKILL) }
        #expect(await holder.waitFor(.seconds(10)) { $0.split(separator: "\n").count >= 3 }, "\(holder.log)")
        let lines = holder.log.split(separator: "\n")
        #expect(lines.prefix(2).allSatisfy { $0.contains("\"result\"") } && lines.dropFirst(2).first?.contains("Too many connections") == true,
                "\(holder.log)")
        // Root (an admin) gets in beyond max_connections: 2 held + 4 > 4.
        let admins = try (0..<4).map { _ in try RawSocketClient(running.socket) }
        #expect(admins.allSatisfy { result($0.call(#"{"jsonrpc":"2.0","id":1,"method":"daemon.status"}"#)) != nil })
    }

    @Test func renewalsOnDemandAreCoalescedAndBounded() async throws {
        let running = try await RunningDaemon.start(provider: false)
        defer { running.stop() }
        // No core file could hold its keys: the daemon set its own core limit to 0.
        let limits = try String(contentsOfFile: "/proc/\(running.daemon.process.processIdentifier)/limits", encoding: .utf8)
        let core = limits.split(separator: "\n").first { $0.hasPrefix("Max core file size") }?.split(separator: " ")
        #expect(core?.contains("0") == true && core?.contains("unlimited") == false, "\(String(describing: core))")
        // Its open-file soft limit is raised to the hard one (every connection is a descriptor).
        let files = limits.split(separator: "\n").first { $0.hasPrefix("Max open files") }?.split(separator: " ").compactMap { Int($0) }
        #expect(files?.count == 2 && files?[0] == files?[1], "\(String(describing: files))")
        let created = try running.sandbox.stat("sessions_created")
        let client = try RawSocketClient(running.socket)
        // 100 renewals at once, within a minute of the last: none reaches bunq, each answers the current session.
        client.send((1...100).map { #"{"jsonrpc":"2.0","id":\#($0),"method":"session.renew","params":{"context":"ops"}}"# }
            .joined(separator: "\n"))
        var generations: Set<Int> = [], renewed = 0, answers = 0
        while answers < 100, let line = client.readLine(timeout: 20),
              let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] {
            answers += 1
            if let result = result(object) {
                generations.insert(result["generation"] as? Int ?? -1)
                if result["renewed"] as? Bool == true { renewed += 1 }
            }
        }
        #expect(answers == 100 && renewed == 0 && generations == [1], "\(answers) answers, \(renewed) renewed, \(generations)")
        #expect(try running.sandbox.stat("sessions_created") == created, "no session was created at bunq")
        // An admin may force one; it is queued for the session-server budget like any renewal.
        let forced = result(client.call(#"{"jsonrpc":"2.0","id":101,"method":"session.renew","params":{"context":"ops","force":true}}"#))
        #expect(forced?["renewed"] as? Bool == true && forced?["generation"] as? Int == 2, "\(String(describing: forced))")
        #expect(try running.sandbox.stat("sessions_created") == created + 1)
    }
}
