import ArgumentParser
import Foundation
import SessionKeeper
import SessiondClient
import SessionProtocol

/// `bunq-sessionctl`: talks to bunq-sessiond over its socket. Exit 0 ok, 1 error reply, 2 usage, 69 unreachable.
@main
struct BunqSessionctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bunq-sessionctl",
        abstract: "Inspect and use bunq-sessiond's sessions.",
        subcommands: [Status.self, List.self, Token.self, Renew.self, Sign.self, OAuthURL.self, OAuthComplete.self,
                      Remove.self, Watch.self, Backup.self])

    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let error as SessiondClientError {
            FileHandle.standardError.write(Data("bunq-sessionctl: \(error)\n".utf8))
            if case .unreachable = error { Foundation.exit(69) }
            Foundation.exit(1)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                // --help and --version.
                print(fullMessage(for: error))
                Foundation.exit(0)
            }
            FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
            Foundation.exit(code == .validationFailure ? 2 : code.rawValue == 64 ? 2 : code.rawValue)
        }
    }
}

struct Connection: ParsableArguments {
    @Option(help: "The daemon's socket (default: $BUNQ_SESSIOND_SOCKET, else /run/bunq-sessiond/socket).")
    var socket: String?

    @Flag(help: "Machine-readable JSON output.")
    var json = false

    func connect() throws -> SessiondConnection {
        try SessiondConnection(path: socket ?? SessiondConnection.defaultPath)
    }

    func printJSON(_ value: some Encodable) {
        print(RPCJSON.encode(value))
    }
}

/// "in 4m12s", "3s ago", "-".
func relative(_ date: Date?) -> String {
    guard let date else { return "-" }
    let seconds = Int(date.timeIntervalSinceNow.rounded())
    let magnitude = abs(seconds)
    let text2 = magnitude >= 86_400 ? "\(magnitude / 86_400)d\(magnitude % 86_400 / 3_600)h"
        : magnitude >= 3_600 ? "\(magnitude / 3_600)h\(magnitude % 3_600 / 60)m"
        : magnitude >= 60 ? "\(magnitude / 60)m\(magnitude % 60)s" : "\(magnitude)s"
    return seconds >= 0 ? "in \(text2)" : "\(text2) ago"
}

func table(_ header: [String], _ rows: [[String]]) -> String {
    let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
    return ([header] + rows).map { row in
        row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
            .trimmingCharacters(in: .whitespaces)
    }.joined(separator: "\n")
}

extension BunqSessionctl {
    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The daemon and every context you may see.")
        @OptionGroup var connection: Connection

        /// `--json`: the daemon's status and every context's, as the daemon wrote them.
        struct Output: Encodable {
            let daemon: RPCResult.DaemonStatus
            let contexts: [RPCResult.ContextStatus]
        }

        func run() throws {
            let client = try connection.connect()
            let daemon = try client.call("daemon.status", as: RPCResult.DaemonStatus.self)
            let contexts = try client.call("context.list", as: RPCResult.ContextList.self).contexts
            var statuses: [RPCResult.ContextStatus] = []
            for context in contexts {
                statuses.append(try client.call("context.status", ["context": .string(context.name)], as: RPCResult.ContextStatus.self))
            }
            if connection.json {
                connection.printJSON(Output(daemon: daemon, contexts: statuses))
                return
            }
            let counts = daemon.contexts
            print("bunq-sessiond \(daemon.version)  ready: \(daemon.ready ? "yes" : "no")  "
                + "up \(daemon.uptimeSeconds)s  contexts: \(counts["total"] ?? 0) "
                + "(\(counts["live"] ?? 0) live, \(counts["retrying"] ?? 0) retrying, \(counts["expired"] ?? 0) expired, "
                + "\(counts["needs_attention"] ?? 0) need attention)")
            let budget = daemon.budget.sessionServer
            if let available = budget.availablePerDay {
                var line = "session-server budget: \(Int((budget.utilisation * 100).rounded()))% "
                    + "(\(Int(budget.neededPerDay.rounded())) of \(Int(available)) sessions a day)"
                if let late = budget.willRunLate { line += ", \(late) will run late" }
                print(line)
            }
            if !daemon.store.reachable {
                // Served from memory meanwhile; renewals that cannot be saved wait for it.
                print("state store (\(daemon.store.backend)): UNREACHABLE since "
                    + "\(daemon.store.failingSince.map(JSONText.timestamp) ?? "?"), "
                    + "\(daemon.store.consecutiveFailures) calls failed; serving the sessions held")
            }
            if let cluster = daemon.cluster {
                print("cluster: instance \(cluster.instance) (egress group \(cluster.egressGroup)), "
                    + "\(cluster.leasesHeld) leases held; state store \(cluster.storeReachable ? "reachable" : "UNREACHABLE")")
                print("  members: " + cluster.members.map { "\($0.instance)[\($0.egressGroup)] \($0.leases)" }.joined(separator: ", "))
            }
            print("")
            print(table(["CONTEXT", "KIND", "STATE", "EXPIRES", "RENEWS", "FAILURES", "LAST ERROR"], statuses.map { status in
                [status.context, status.kind, status.state, relative(status.expiresAt),
                 relative(status.state == "retrying" ? status.nextRetryAt : status.renewAt),
                 "\(status.consecutiveFailures)", String((status.lastError ?? "").prefix(60))]
            }))
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The contexts you may use.")
        @OptionGroup var connection: Connection

        func run() throws {
            let result = try connection.connect().call("context.list", as: RPCResult.ContextList.self)
            if connection.json { return connection.printJSON(result) }
            print(table(["CONTEXT", "KIND", "STATE", "USER", "EXPIRES", "RENEWS"], result.contexts.map { context in
                [context.name, context.kind, context.state, context.userId.map(String.init) ?? "-",
                 relative(context.expiresAt), relative(context.renewAt)]
            }))
        }
    }

    struct Token: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print only the context's current session token.")
        @OptionGroup var connection: Connection
        @Argument var context: String

        func run() throws {
            let result = try connection.connect().call("session.get", ["context": .string(context)], as: RPCResult.Session.self)
            if connection.json { return connection.printJSON(result) }
            print(result.token)
        }
    }

    struct Backup: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Copy the daemon's SQLite state to FILE while it runs (admins): consistent, fsync'd, mode 0600, still sealed.")
        @OptionGroup var connection: Connection
        @Option(help: "The state directory, without asking the daemon (for a stopped daemon).")
        var state: String?
        @Argument(help: "Where the backup goes (replaced atomically).")
        var file: String

        func run() throws {
            var directory = state
            if directory == nil {
                let status = try connection.connect().call("daemon.status", as: RPCResult.DaemonStatus.self)
                guard let location = status.state else {
                    throw ValidationError("only an admin (access.admin) may back up the state")
                }
                guard location.backend == "sqlite" else {
                    throw ValidationError("the state is in PostgreSQL: back it up with PostgreSQL's own tools (pg_dump, a replica)")
                }
                directory = location.directory
            }
            guard let directory else { throw ValidationError("the daemon did not say where its state is; give --state DIR") }
            let outcome: StateBackup.Outcome
            do {
                outcome = try StateBackup.backup(stateDirectory: directory, to: file)
            } catch {
                FileHandle.standardError.write(Data("bunq-sessionctl: backup failed: \(error)\n".utf8))
                Foundation.exit(1)
            }
            if connection.json {
                return connection.printJSON(["file": .string(file), "contexts": .integer(outcome.contexts),
                                             "bytes": .integer(Int(outcome.bytes))] as JSONValue)
            }
            print("\(file): \(outcome.contexts) contexts, \(outcome.bytes) bytes, sealed by the master key")
            if FileManager.default.fileExists(atPath: directory + "/master.key") {
                FileHandle.standardError.write(Data(("note: the master key is \(directory)/master.key, which this backup does "
                    + "not contain: keep a copy of it apart from the backup, or the backup cannot be opened\n").utf8))
            }
        }
    }

    struct Renew: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Renew now; returns once the new session is live (the current one if the last renewal is recent).")
        @OptionGroup var connection: Connection
        @Argument var context: String
        @Flag(help: "Renew even within renewal.min_manual_interval of the last renewal (admins).")
        var force = false

        func run() throws {
            var params: [String: JSONValue] = ["context": .string(context)]
            if force { params["force"] = true }
            let result = try connection.connect().call("session.renew", params, as: RPCResult.Renewal.self)
            if connection.json { return connection.printJSON(result) }
            let note = result.renewed ? "" : " (renewed recently: the current session; --force to renew)"
            print("\(context): generation \(result.generation), expires \(relative(result.expiresAt))\(note)")
        }
    }

    struct Sign: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Sign the body on stdin (exact bytes) with the context's key.")
        @OptionGroup var connection: Connection
        @Argument var context: String

        func run() throws {
            let body = FileHandle.standardInput.readDataToEndOfFile()
            let result = try connection.connect().call("request.sign", ["context": .string(context), "body_base64": .string(body.base64EncodedString())],
                                                       as: RPCResult.Signature.self)
            if connection.json { return connection.printJSON(result) }
            print(result.signature)
        }
    }

    struct OAuthURL: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "oauth-url", abstract: "An authorize URL for a bunq user (admin).")
        @OptionGroup var connection: Connection
        @Option(name: .customLong("redirect-uri")) var redirectURI: String?

        func run() throws {
            var params: [String: JSONValue] = [:]
            if let redirectURI { params["redirect_uri"] = .string(redirectURI) }
            let result = try connection.connect().call("oauth.authorize_url", params, as: RPCResult.AuthorizeURL.self)
            if connection.json { return connection.printJSON(result) }
            print(result.url)
            FileHandle.standardError.write(Data("state \(result.state) expires \(relative(result.expiresAt))\n".utf8))
        }
    }

    struct OAuthComplete: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "oauth-complete", abstract: "Connect the user who approved (admin).")
        @OptionGroup var connection: Connection
        @Option var code: String
        @Option var state: String
        @Option var name: String?

        func run() throws {
            var params: [String: JSONValue] = ["code": .string(code), "state": .string(state)]
            if let name { params["name"] = .string(name) }
            let result = try connection.connect().call("oauth.complete", params, as: RPCResult.Connected.self)
            if connection.json { return connection.printJSON(result) }
            print(result.context)
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "End the context's session at bunq and forget it (admin).")
        @OptionGroup var connection: Connection
        @Argument var context: String

        func run() throws {
            let result = try connection.connect().call("context.remove", ["context": .string(context)])
            if connection.json { return connection.printJSON(JSONValue.object(result)) }
            print("removed \(context)")
        }
    }

    struct Watch: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print rotations and state changes as they happen.")
        @OptionGroup var connection: Connection
        @Argument var context: String?

        func run() throws {
            let client = try connection.connect()
            let subscribed = try client.call("session.subscribe", context.map { ["context": .string($0)] } ?? [:], as: RPCResult.Subscribed.self)
            if !connection.json {
                print("watching \(subscribed.subscribed.joined(separator: ", "))")
            }
            while true {
                let (method, params) = try client.nextNotification()
                let line = connection.json ? JSONValue.object(["method": .string(method), "params": .object(params)]).json
                    : method == "session.rotated"
                    ? "\(timeOfDay()) \(params["context"] ?? "?") rotated: generation \(params["generation"] ?? "?"), "
                        + "expires \(relative(params["expires_at"]?.string.flatMap(JSONText.date)))"
                    : "\(timeOfDay()) \(params["context"] ?? "?") \(params["state"] ?? "?"): \(params["reason"] ?? "")"
                // Unbuffered, so a pipe sees each line as it happens.
                FileHandle.standardOutput.write(Data((line + "\n").utf8))
            }
        }

        func timeOfDay() -> String {
            let formatter = DateFormatter()
            formatter.dateFormat = "HH:mm:ss"
            return formatter.string(from: Date())
        }
    }
}
