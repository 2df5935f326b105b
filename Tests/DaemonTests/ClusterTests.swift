import Foundation
import TestThreads
import Testing
import TestSupport

/// Three daemons on one PostgreSQL store, each leaving from its own loopback address (127.0.0.2/3/4: three IPs to
/// the sandbox, three egress groups), with bunq's limits on (scaled to a twentieth: one session-server call per
/// 1.5 s per IP) and one-minute sessions (renewed at about 45 s, handed out until 54 s): all of
/// them serve every identity, which is registered once; rotations, OAuth completions, a daemon killed, a daemon
/// paused past its leases and PostgreSQL itself stopping are lived through with no token that stops working
/// and no 429. The tests run side by side: each has its own PostgreSQL, emulator and daemons.
@Suite(.ownThread) struct ClusterTests {
    /// One daemon of the cluster and its socket.
    struct Member {
        let index: Int
        let socket: String
        let child: ChildProcess

        /// `timeout`: how long to wait for the answer (seconds). A forced renewal of a context another daemon
        /// holds may wait for that daemon as long as the keeper's own bound, twice the lease plus 30 s.
        func call(_ method: String, _ params: String = "{}", timeout: Double = 10) -> [String: Any] {
            guard let client = try? RawSocketClient(socket) else { return [:] }
            client.send(#"{"jsonrpc":"2.0","id":1,"method":"\#(method)","params":\#(params)}"#)
            guard let reply = client.readLine(timeout: timeout),
                  let object = try? JSONSerialization.jsonObject(with: Data(reply.utf8)) as? [String: Any] else { return [:] }
            return object
        }

        func session(_ context: String) -> (token: String, generation: Int)? {
            guard let answer = result(call("session.get", #"{"context":"\#(context)"}"#)),
                  let token = answer["token"] as? String, let generation = answer["generation"] as? Int else { return nil }
            return (token, generation)
        }

        var cluster: [String: Any] { (result(call("daemon.status"))?["cluster"] as? [String: Any]) ?? [:] }
        var leasesHeld: Int { cluster["leases_held"] as? Int ?? -1 }
    }

    /// Daemon `index`'s configuration: `base` (from `writeConfig`) with its own socket and state directory, the
    /// shared PostgreSQL store and key, its source address and egress group, and 3-second leases.
    static func config(_ base: String, dir: TemporaryDirectory, index: Int, server: PostgresServer, keyFile: String,
                       source: String, group: String) -> String {
        let shared = onPostgreSQL(base, dir: dir, server: server, keyFile: keyFile, stateDirectory: dir.path("state-\(index)"))
        return shared.replacingOccurrences(of: "bunq:\n", with: "bunq:\n  source_address: \(source)\n")
            .replacingOccurrences(of: "socket:\n  path: \(dir.path("socket"))\n", with: "socket:\n  path: \(dir.path("socket-\(index)"))\n")
            + "\ncluster: {instance: daemon-\(index), egress_group: \(group), lease_seconds: 3}\n"
    }

    /// Two daemons leaving from one address, in one egress group: one session-server budget between them. Every
    /// identity is renewed at once through both (forced renewals, which each daemon would otherwise start as
    /// soon as its own budget allowed): the calls reach the sandbox one window apart, and none is answered 429.
    @Test func daemonsOfOneEgressGroupShareItsBudget() async throws {
        if let reason = PostgresServer.unavailable {
            #expect(!Skip.report("a cluster on PostgreSQL: \(reason)"))
            return
        }
        let server = try PostgresServer()
        defer { server.stop() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let sandbox = try await Sandbox.start(in: dir, ["--session-timeout", "600"], limits: .scaled(0.05))
        defer { _ = sandbox.child.stop() }
        let keyFile = try writeMasterKey(dir)
        let base = try String(contentsOfFile: try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false,
                                                              moreKeys: try (1...5).map { _ in try sandbox.newAPIKey() }),
                              encoding: .utf8)
        let limitedBefore = try sandbox.stat("rate_limited")
        var members: [Member] = []
        defer { for member in members { _ = member.child.stop() } }
        for index in 0..<2 {
            let path = try dir.write("config-\(index).yaml", Self.config(base, dir: dir, index: index, server: server, keyFile: keyFile,
                                                                          source: "127.0.0.5", group: "shared"))
            members.append(Member(index: index, socket: dir.path("socket-\(index)"),
                                  child: try ChildProcess(Binaries.daemon, ["--config", path], log: dir.path("daemon-\(index).log"))))
        }
        for member in members {
            #expect(await member.child.waitFor(.seconds(120)) { $0.contains("[bunq_sessiond] ready") }, "\(member.child.log)")
        }
        let names = ["ops"] + (1...5).map { "id-\($0)" }
        var spread = false
        for _ in 0..<150 where !spread {
            let held = members.map(\.leasesHeld)
            spread = held.allSatisfy { $0 > 0 } && held.reduce(0, +) == names.count
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(spread, "both daemons hold leases: \(members.map(\.leasesHeld))")
        let callsBefore = try sandbox.requests("POST /v1/session-server")
        // Every renewal asked for at once, half through each daemon (each forwards to the holder as needed).
        let clients = try names.enumerated().map { index, name in
            let client = try RawSocketClient(members[index % 2].socket)
            client.send(#"{"jsonrpc":"2.0","id":1,"method":"session.renew","params":{"context":"\#(name)","force":true}}"#)
            return client
        }
        var replies: [String] = []
        for client in clients {
            var reply: String?
            for _ in 0..<300 where reply == nil {
                reply = client.readLine(timeout: 0.05)
                if reply == nil { try await Task.sleep(for: .milliseconds(50)) }
            }
            replies.append(reply ?? "no reply")
        }
        #expect(replies.allSatisfy { $0.contains(#""renewed":true"#) }, "\(replies)")
        #expect(try sandbox.requests("POST /v1/session-server") - callsBefore == names.count)
        #expect(try sandbox.stat("rate_limited") == limitedBefore, "one budget for the two daemons on one IP: no 429")
    }

    /// Three daemons on a fresh PostgreSQL store, each from its own address, and ten identities (the provider,
    /// `ops`, id-1…8) of one-minute sessions: `body` runs once every identity is live on every daemon, registered
    /// once, and the leases are spread over the three.
    struct ThreeDaemons {
        let server: PostgresServer
        let sandbox: Sandbox
        let members: [Member]
        let names: [String]

        /// Every token `serving` hands out for `contexts` works at bunq; paced under bunq's GET limit.
        func tokensWork(_ serving: [Member], _ contexts: [String]) async throws -> [String] {
            var failures: [String] = []
            for member in serving {
                for name in contexts {
                    guard let (token, _) = member.session(name) else {
                        let answer = member.call("session.get", #"{"context":"\#(name)"}"#)
                        failures.append("daemon-\(member.index) \(name): no token: \(answer) at \(Date())")
                        continue
                    }
                    let status = try sandbox.userStatus(token: token)
                    if status != 200 { failures.append("daemon-\(member.index) \(name): HTTP \(status)") }
                    try await Task.sleep(for: .milliseconds(150))
                }
            }
            return failures
        }

        func generations(_ member: Member, _ contexts: [String]) -> [String: Int] {
            Dictionary(uniqueKeysWithValues: contexts.compactMap { name in member.session(name).map { (name, $0.generation) } })
        }

        static func run(_ test: String, _ body: (ThreeDaemons) async throws -> Void) async throws {
            if let reason = PostgresServer.unavailable {
                #expect(!Skip.report("\(test): a cluster on PostgreSQL: \(reason)"))
                return
            }
            let server = try PostgresServer()
            defer { server.stop() }
            let dir = try TemporaryDirectory()
            defer { dir.remove() }
            let sandbox = try await Sandbox.start(in: dir, ["--session-timeout", "60", "--psd2-first-session-timeout", "600"],
                                               limits: .scaled(0.05))
            defer { _ = sandbox.child.stop() }
            let keyFile = try writeMasterKey(dir)
            let base = try String(contentsOfFile: try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: true,
                                                                  firstSession: 600, moreKeys: try (1...8).map { _ in try sandbox.newAPIKey() }),
                                  encoding: .utf8)
            // 429s from here on are the daemons' (or the tests' own token checks, which are paced below bunq's limit).
            let limitedBefore = try sandbox.stat("rate_limited")
            var members: [Member] = []
            defer {
                for member in members {
                    kill(member.child.process.processIdentifier, SIGCONT)
                    _ = member.child.stop()
                }
            }
            for index in 0..<3 {
                let config = ClusterTests.config(base, dir: dir, index: index, server: server, keyFile: keyFile,
                                                 source: "127.0.0.\(index + 2)", group: "ip-\(index + 2)")
                #expect(config.contains("backend: postgresql") && config.contains("socket-\(index)") && config.contains("127.0.0.\(index + 2)"))
                let path = try dir.write("config-\(index).yaml", config)
                let child = try ChildProcess(Binaries.daemon, ["--config", path], log: dir.path("daemon-\(index).log"))
                members.append(Member(index: index, socket: dir.path("socket-\(index)"), child: child))
            }
            for member in members {
                #expect(await member.child.waitFor(.seconds(120)) { $0.contains("[bunq_sessiond] ready") }, "\(member.child.log)")
            }
            let world = ThreeDaemons(server: server, sandbox: sandbox, members: members,
                                     names: ["provider", "ops"] + (1...8).map { "id-\($0)" })
            let names = world.names
            // Every identity live on every daemon, registered once; the leases spread, together all.
            let everywhere = await eventually(within: .seconds(60), every: .milliseconds(100)) { members.allSatisfy { member in names.allSatisfy { member.session($0) != nil } } }
            #expect(everywhere, "\(members.map(\.child.log))")
            #expect(try sandbox.stat("installations") == names.count, "one installation per identity")
            #expect(try sandbox.stat("device_servers") == names.count, "one device per identity")
            let spread = await eventually(within: .seconds(15), every: .milliseconds(100)) {
                let held = members.map(\.leasesHeld)
                return held.allSatisfy { $0 > 0 } && held.reduce(0, +) == names.count
            }
            #expect(spread, "leases: \(members.map(\.leasesHeld))")
            try await body(world)
            #expect(try sandbox.stat("rate_limited") == limitedBefore, "no 429 from the sandbox throughout")
        }
    }

    /// Three daemons serve every identity, registered once; a renewal, a subscriber and an OAuth user cross
    /// daemons; and after a kill -9 of one the others take its contexts over within a lease period and renew
    /// every identity, with no token that stops working.
    @Test(.tags(.long)) func threeDaemonsShareOneStoreAndSurviveAKill() async throws {
        try await ThreeDaemons.run("threeDaemonsShareOneStoreAndSurviveAKill") { world in
            let members = world.members, names = world.names, sandbox = world.sandbox
            #expect((members[0].cluster["members"] as? [Any])?.count == 3)
            let status = try Command.check([Binaries.directory.appendingPathComponent("bunq-sessionctl").path, "status",
                                            "--socket", members[0].socket]).stdoutText
            #expect(status.contains("cluster: instance daemon-0 (egress group ip-2)") && status.contains("state store reachable")
                    && status.contains("daemon-1[ip-3]"), "\(status)")
            #expect(try await world.tokensWork(members, names).isEmpty)

            // A renewal through one daemon is served by the others within 2 s, and a subscriber on another hears it.
            let subscriber = try RawSocketClient(members[2].socket)
            subscriber.send(#"{"jsonrpc":"2.0","id":1,"method":"session.subscribe","params":{"context":"ops"}}"#)
            #expect(subscriber.readLine()?.contains(#""result""#) == true)
            let renewed = try #require(result(members[0].call("session.renew", #"{"context":"ops","force":true}"#, timeout: 40)), "renew")
            let generation = try #require(renewed["generation"] as? Int)
            let propagated = await eventually(within: .seconds(2), every: .milliseconds(100)) { members.allSatisfy { ($0.session("ops")?.generation ?? 0) >= generation } }
            #expect(propagated, "generation \(generation) of ops reached every daemon")
            var heard: String?
            while let line = subscriber.readLine(timeout: 3), heard == nil {
                if line.contains("session.rotated"), line.contains(#""generation":\#(generation)"#) { heard = line }
            }
            #expect(heard != nil, "the rotation made on daemon-0 reached a subscriber of daemon-2")

            // OAuth authorized through one daemon, completed through another, live on all three.
            let authorization = try #require(result(members[0].call("oauth.authorize_url")))
            let url = try #require(authorization["url"] as? String), state = try #require(authorization["state"] as? String)
            let location = try Command.check(["curl", "-s", "-o", "/dev/null", "-w", "%{redirect_url}", url]).stdoutText
            let code = try #require(URLComponents(string: location)?.queryItems?.first { $0.name == "code" }?.value, "\(location)")
            var completed: [String: Any] = [:]
            _ = await eventually(within: .seconds(30), every: .milliseconds(100)) {
                completed = members[1].call("oauth.complete", #"{"code":"\#(code)","state":"\#(state)"}"#)
                return errorCode(completed) != 1003 && errorCode(completed) != 1005
            }
            let user = try #require(result(completed)?["context"] as? String, "\(completed)\n\(members[1].child.log)")
            #expect(await eventually(within: .seconds(5), every: .milliseconds(100)) { members.allSatisfy { $0.session(user) != nil } }, "the OAuth user is live everywhere")
            let all = names + [user]

            // kill -9 of one daemon: the others hold every lease within one lease period (3 s; 1 s of polling slack).
            let atKill = world.generations(members[0], all)
            kill(members[2].child.process.processIdentifier, SIGKILL)
            let survivors = Array(members[0..<2])
            let takeover = await eventually(within: .seconds(4), every: .milliseconds(100)) { survivors.map(\.leasesHeld).reduce(0, +) == all.count }
            #expect(takeover, "leases after the kill: \(survivors.map(\.leasesHeld))")
            // Until the survivors have renewed every identity (each is due within one session lifetime of the kill),
            // every token they hand out works.
            var failures: [String] = []
            var renewedAll = false
            let lifetimeEnd = ContinuousClock.now + .seconds(75)
            while !renewedAll, ContinuousClock.now < lifetimeEnd {
                failures += try await world.tokensWork(survivors, all)
                let now = world.generations(members[0], all)
                renewedAll = all.allSatisfy { (now[$0] ?? 0) > (atKill[$0] ?? 0) }
            }
            failures += try await world.tokensWork(survivors, all)
            #expect(failures.isEmpty, "\(failures)")
            #expect(renewedAll, "renewed by the survivors: \(atKill) → \(world.generations(members[0], all))")
            #expect(try sandbox.stat("installations") == all.count, "nothing registered twice")
        }
    }

    /// A daemon paused (SIGSTOP) for three lease periods loses its contexts to the others and, resumed, serves
    /// nothing stale; PostgreSQL stopped for a few seconds costs no token, is reported, and renewals resume after.
    @Test(.tags(.long)) func aPausedDaemonAndAStoppedStoreCostNoToken() async throws {
        try await ThreeDaemons.run("aPausedDaemonAndAStoppedStoreCostNoToken") { world in
            let members = world.members, all = world.names, sandbox = world.sandbox, server = world.server
            // SIGSTOP one daemon for three lease periods: its leases go to the others; after SIGCONT nothing it serves
            // is stale or refused, and its late writes (if any) were fenced off.
            var failures: [String] = []
            let running = Array(members[1...])
            kill(members[0].child.process.processIdentifier, SIGSTOP)
            let pauseEnd = ContinuousClock.now + .seconds(9)
            while ContinuousClock.now < pauseEnd { failures += try await world.tokensWork(running, all) }
            #expect(running.map(\.leasesHeld).reduce(0, +) == all.count, "the running daemons hold every lease")
            kill(members[0].child.process.processIdentifier, SIGCONT)
            failures += try await world.tokensWork(members, all)
            #expect(failures.isEmpty, "\(failures)")
            let caughtUp = await eventually(within: .seconds(5), every: .milliseconds(100)) { world.generations(members[0], all) == world.generations(members[1], all) }
            #expect(caughtUp, "the resumed daemon serves the current generations")
            #expect(await eventually(within: .seconds(6), every: .milliseconds(100)) { members.allSatisfy { $0.leasesHeld > 0 } }, "it takes a share again")

            // PostgreSQL stopped for a few seconds: tokens still served, the outage reported, renewals resumed after.
            let beforeOutage = world.generations(members[0], all)
            server.halt("fast")
            let unreachable = await eventually(within: .seconds(5), every: .milliseconds(100)) { members.allSatisfy { $0.cluster["store_reachable"] as? Bool == false } }
            #expect(unreachable, "daemon.status reports the unreachable store")
            // Kept short of the sessions' slack (about 9 s between a renewal and the end of its handing out): a longer
            // outage rightly leaves a session unrenewed, and then unserved, at these lifetimes.
            failures += try await world.tokensWork(Array(members[0..<2]), Array(all.prefix(4)))
            try server.restart()
            #expect(await eventually(within: .seconds(10), every: .milliseconds(100)) { members.allSatisfy { $0.cluster["store_reachable"] as? Bool == true } })
            // Every identity is renewed within one lifetime of the store's return (each before its session runs out).
            let resumed = await eventually(within: .seconds(65), every: .milliseconds(100)) {
                let now = world.generations(members[1], all)
                return all.allSatisfy { (now[$0] ?? 0) > (beforeOutage[$0] ?? 0) }
            }
            #expect(resumed, "renewals resume once the store is back")
            failures += try await world.tokensWork(members, all)
            #expect(failures.isEmpty, "\(failures)")
            #expect(try sandbox.stat("installations") == all.count, "nothing registered twice")
        }
    }
}

extension ClusterTests {
    /// One daemon of three cut off from PostgreSQL by dropped packets (a relay that stops forwarding: its
    /// connections stay open and nothing answers, as a partition looks, not a refused connection): it stops
    /// renewing once its leases lapse on its own clock, the other two take its contexts over and renew them, no
    /// context gets two session-server calls for one renewal, and when the network heals it rejoins without a
    /// restart. Under bunq's limits (scaled to a twentieth).
    @Test func aDaemonPartitionedFromTheStoreHandsItsContextsOverAndRejoins() async throws {
        if let reason = PostgresServer.unavailable {
            #expect(!Skip.report("a partitioned cluster member: \(reason)"))
            return
        }
        let server = try PostgresServer()
        defer { server.stop() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let relayPort = try freeLoopbackPort()
        let relay = try ChildProcess("/usr/bin/python3", ["-c", StoreOutageTests.relay, "\(relayPort)", "127.0.0.1", "\(server.port)"],
                                     log: dir.path("relay.log"))
        defer { _ = relay.stop(signal: SIGKILL) }
        #expect(await relay.waitFor(.seconds(20)) { $0.contains("relaying") }, "\(relay.log)")
        let sandbox = try await Sandbox.start(in: dir, ["--session-timeout", "600"], limits: .scaled(0.05))
        defer { _ = sandbox.child.stop() }
        let keyFile = try writeMasterKey(dir)
        let base = try String(contentsOfFile: try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false,
                                                              moreKeys: try (1...5).map { _ in try sandbox.newAPIKey() }),
                              encoding: .utf8)
        let limitedBefore = try sandbox.stat("rate_limited")
        var members: [Member] = []
        defer { for member in members { _ = member.child.stop() } }
        for index in 0..<3 {
            var config = Self.config(base, dir: dir, index: index, server: server, keyFile: keyFile,
                                     source: "127.0.0.\(index + 2)", group: "ip-\(index + 2)")
                .replacingOccurrences(of: "  backend: postgresql\n", with: "  backend: postgresql\n  timeout: 1s\n")
            // Daemon 0 reaches the store through the relay.
            if index == 0 { config = config.replacingOccurrences(of: ":\(server.port)/", with: ":\(relayPort)/") }
            let path = try dir.write("config-\(index).yaml", config)
            members.append(Member(index: index, socket: dir.path("socket-\(index)"),
                                  child: try ChildProcess(Binaries.daemon, ["--config", path], log: dir.path("daemon-\(index).log"))))
        }
        for member in members {
            #expect(await member.child.waitFor(.seconds(120)) { $0.contains("[bunq_sessiond] ready") }, "\(member.child.log)")
        }
        let names = ["ops"] + (1...5).map { "id-\($0)" }
        #expect(await eventually(within: .seconds(30)) {
            let held = members.map(\.leasesHeld)
            return held.allSatisfy { $0 > 0 } && held.reduce(0, +) == names.count
        }, "the leases spread: \(members.map(\.leasesHeld))")
        #expect(await eventually(within: .seconds(60)) { names.allSatisfy { members[1].session($0) != nil } })
        let cutOff = members[0]

        // The partition: daemon 0's connections to the store stay open and nothing answers.
        kill(relay.process.processIdentifier, SIGUSR1)
        #expect(await eventually(within: .seconds(20)) { members[1].leasesHeld + members[2].leasesHeld == names.count },
                "the others take the cut-off daemon's contexts over: \(members.map(\.leasesHeld))")
        #expect(await eventually(within: .seconds(10)) { cutOff.leasesHeld == 0 }, "it renews nothing it cannot save")
        #expect(names.allSatisfy { cutOff.session($0) != nil }, "it still serves what it holds")
        // Every identity renewed now, by the daemons that hold it. Asked of daemon 1, a context daemon 2 holds is
        // renewed by daemon 2, whose renewals wait their turn for its IP's session-server window: the answer may
        // take up to the keeper's bound for waiting on a holder (3-s leases: 36 s), not the usual 10 s.
        for name in names {
            let started = ContinuousClock.now
            let reply = members[1].call("session.renew", #"{"context":"\#(name)","force":true}"#, timeout: 40)
            #expect(result(reply)?["renewed"] as? Bool == true, "\(name) after \(ContinuousClock.now - started): \(reply)")
        }

        // The network heals: it rejoins by itself, takes its share again and serves the newest sessions.
        kill(relay.process.processIdentifier, SIGUSR2)
        #expect(await eventually(within: .seconds(30)) {
            cutOff.cluster["store_reachable"] as? Bool == true && cutOff.leasesHeld > 0
        }, "rejoined: \(cutOff.cluster) \(cutOff.child.log.suffix(2_000))")
        #expect(await eventually(within: .seconds(20)) {
            names.allSatisfy { cutOff.session($0)?.generation == members[1].session($0)?.generation }
        }, "the rejoined daemon serves the sessions renewed meanwhile")

        // One session-server call per session the store holds: none wasted on a renewal that could not be saved,
        // none made twice for one renewal.
        let generations = try server.psql("SELECT sum(generation) FROM context", database: server.database)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try "\(sandbox.requests("POST /v1/session-server"))" == generations)
        #expect(try sandbox.stat("rate_limited") == limitedBefore, "no 429")
    }
}
