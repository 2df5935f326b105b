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

    func printJSON(_ object: [String: Any]) {
        print(JSONText.encode(object))
    }
}

/// "in 4m12s", "3s ago", "-".
func relative(_ timestamp: Any?) -> String {
    guard let text = timestamp as? String, let date = parseTimestamp(text) else { return "-" }
    let seconds = Int(date.timeIntervalSinceNow.rounded())
    let magnitude = abs(seconds)
    let text2 = magnitude >= 86_400 ? "\(magnitude / 86_400)d\(magnitude % 86_400 / 3_600)h"
        : magnitude >= 3_600 ? "\(magnitude / 3_600)h\(magnitude % 3_600 / 60)m"
        : magnitude >= 60 ? "\(magnitude / 60)m\(magnitude % 60)s" : "\(magnitude)s"
    return seconds >= 0 ? "in \(text2)" : "\(text2) ago"
}

func parseTimestamp(_ text: String) -> Date? {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return formatter.date(from: text)
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

        func run() throws {
            let client = try connection.connect()
            let daemon = try client.call("daemon.status")
            let contexts = (try client.call("context.list")["contexts"] as? [[String: Any]]) ?? []
            var statuses: [[String: Any]] = []
            for context in contexts {
                guard let name = context["name"] as? String else { continue }
                statuses.append(try client.call("context.status", ["context": name]))
            }
            if connection.json {
                connection.printJSON(["daemon": daemon, "contexts": statuses])
                return
            }
            let counts = daemon["contexts"] as? [String: Any] ?? [:]
            print("bunq-sessiond \(daemon["version"] ?? "?")  ready: \(daemon["ready"] as? Bool == true ? "yes" : "no")  "
                + "up \(daemon["uptime_seconds"] ?? 0)s  contexts: \(counts["total"] ?? 0) "
                + "(\(counts["live"] ?? 0) live, \(counts["retrying"] ?? 0) retrying, \(counts["expired"] ?? 0) expired, "
                + "\(counts["needs_attention"] ?? 0) need attention)")
            if let budget = (daemon["budget"] as? [String: Any])?["session_server"] as? [String: Any],
               let available = budget["available_per_day"] as? Double, let utilisation = budget["utilisation"] as? Double {
                var line = "session-server budget: \(Int((utilisation * 100).rounded()))% "
                    + "(\(Int((budget["needed_per_day"] as? Double ?? 0).rounded())) of \(Int(available)) sessions a day)"
                if let late = budget["will_run_late"] as? Int { line += ", \(late) will run late" }
                print(line)
            }
            if let store = daemon["store"] as? [String: Any], store["reachable"] as? Bool == false {
                // Served from memory meanwhile; renewals that cannot be saved wait for it.
                print("state store (\(store["backend"] ?? "?")): UNREACHABLE since \(store["failing_since"] ?? "?"), "
                    + "\(store["consecutive_failures"] ?? 0) calls failed; serving the sessions held")
            }
            if let cluster = daemon["cluster"] as? [String: Any] {
                let members = cluster["members"] as? [[String: Any]] ?? []
                print("cluster: instance \(cluster["instance"] ?? "?") (egress group \(cluster["egress_group"] ?? "?")), "
                    + "\(cluster["leases_held"] ?? 0) leases held; state store "
                    + "\(cluster["store_reachable"] as? Bool == false ? "UNREACHABLE" : "reachable")")
                print("  members: " + members.map { member in
                    "\(member["instance"] ?? "?")[\(member["egress_group"] ?? "?")] \(member["leases"] ?? 0)"
                }.joined(separator: ", "))
            }
            print("")
            print(table(["CONTEXT", "KIND", "STATE", "EXPIRES", "RENEWS", "FAILURES", "LAST ERROR"], statuses.map { status in
                [status["context"] as? String ?? "?", status["kind"] as? String ?? "?", status["state"] as? String ?? "?",
                 relative(status["expires_at"]), relative(status["state"] as? String == "retrying" ? status["next_retry_at"] : status["renew_at"]),
                 "\(status["consecutive_failures"] ?? 0)", String((status["last_error"] as? String ?? "").prefix(60))]
            }))
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The contexts you may use.")
        @OptionGroup var connection: Connection

        func run() throws {
            let result = try connection.connect().call("context.list")
            if connection.json { return connection.printJSON(result) }
            let contexts = result["contexts"] as? [[String: Any]] ?? []
            print(table(["CONTEXT", "KIND", "STATE", "USER", "EXPIRES", "RENEWS"], contexts.map { context in
                [context["name"] as? String ?? "?", context["kind"] as? String ?? "?", context["state"] as? String ?? "?",
                 (context["user_id"] as? Int).map(String.init) ?? "-", relative(context["expires_at"]), relative(context["renew_at"])]
            }))
        }
    }

    struct Token: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print only the context's current session token.")
        @OptionGroup var connection: Connection
        @Argument var context: String

        func run() throws {
            let result = try connection.connect().call("session.get", ["context": context])
            if connection.json { return connection.printJSON(result) }
            print(result["token"] as? String ?? "")
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
                let status = try connection.connect().call("daemon.status")
                guard let location = status["state"] as? [String: Any] else {
                    throw ValidationError("only an admin (access.admin) may back up the state")
                }
                guard location["backend"] as? String == "sqlite" else {
                    throw ValidationError("the state is in PostgreSQL: back it up with PostgreSQL's own tools (pg_dump, a replica)")
                }
                directory = location["directory"] as? String
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
                return connection.printJSON(["file": file, "contexts": outcome.contexts, "bytes": outcome.bytes])
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
            var params: [String: Any] = ["context": context]
            if force { params["force"] = true }
            let result = try connection.connect().call("session.renew", params)
            if connection.json { return connection.printJSON(result) }
            let note = result["renewed"] as? Bool == false ? " (renewed recently: the current session; --force to renew)" : ""
            print("\(context): generation \(result["generation"] ?? "?"), expires \(relative(result["expires_at"]))\(note)")
        }
    }

    struct Sign: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Sign the body on stdin (exact bytes) with the context's key.")
        @OptionGroup var connection: Connection
        @Argument var context: String

        func run() throws {
            let body = FileHandle.standardInput.readDataToEndOfFile()
            let result = try connection.connect().call("request.sign", ["context": context,
                                                                          "body_base64": body.base64EncodedString()])
            if connection.json { return connection.printJSON(result) }
            print(result["signature"] as? String ?? "")
        }
    }

    struct OAuthURL: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "oauth-url", abstract: "An authorize URL for a bunq user (admin).")
        @OptionGroup var connection: Connection
        @Option(name: .customLong("redirect-uri")) var redirectURI: String?

        func run() throws {
            var params: [String: Any] = [:]
            if let redirectURI { params["redirect_uri"] = redirectURI }
            let result = try connection.connect().call("oauth.authorize_url", params)
            if connection.json { return connection.printJSON(result) }
            print(result["url"] as? String ?? "")
            FileHandle.standardError.write(Data("state \(result["state"] ?? "?") expires \(relative(result["expires_at"]))\n".utf8))
        }
    }

    struct OAuthComplete: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "oauth-complete", abstract: "Connect the user who approved (admin).")
        @OptionGroup var connection: Connection
        @Option var code: String
        @Option var state: String
        @Option var name: String?

        func run() throws {
            var params: [String: Any] = ["code": code, "state": state]
            if let name { params["name"] = name }
            let result = try connection.connect().call("oauth.complete", params)
            if connection.json { return connection.printJSON(result) }
            print(result["context"] as? String ?? "")
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "End the context's session at bunq and forget it (admin).")
        @OptionGroup var connection: Connection
        @Argument var context: String

        func run() throws {
            let result = try connection.connect().call("context.remove", ["context": context])
            if connection.json { return connection.printJSON(result) }
            print("removed \(context)")
        }
    }

    struct Watch: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print rotations and state changes as they happen.")
        @OptionGroup var connection: Connection
        @Argument var context: String?

        func run() throws {
            let client = try connection.connect()
            let subscribed = try client.call("session.subscribe", context.map { ["context": $0] } ?? [:])
            if !connection.json {
                print("watching \((subscribed["subscribed"] as? [String] ?? []).joined(separator: ", "))")
            }
            while true {
                let (method, params) = try client.nextNotification()
                let line = connection.json ? JSONText.encode(["method": method, "params": params])
                    : method == "session.rotated"
                    ? "\(timeOfDay()) \(params["context"] ?? "?") rotated: generation \(params["generation"] ?? "?"), "
                        + "expires \(relative(params["expires_at"]))"
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
