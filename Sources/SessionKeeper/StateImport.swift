import Foundation

/// Moving in: copies the contexts of one state into another (an SQLite state into the PostgreSQL store), opening
/// each secret with the source's key and sealing it again with the target's. Idempotent: a context the target
/// already holds at the same or a newer generation is kept as it is (a daemon on the target may have renewed it
/// since), so running it twice, or after a partial run, copies only what is missing or older. Registrations come
/// along whole (installation, device, sessions): nothing is registered at bunq again.
public enum StateImport {
    public struct Outcome: Sendable, Equatable {
        /// Copied (new to the target, or newer in the source).
        public var imported: [String] = []
        /// Left alone: the target's generation is the same or newer.
        public var kept: [String] = []
    }

    public static func run(from source: any StateBackend, into target: any StateBackend) async throws -> Outcome {
        var outcome = Outcome()
        var copies: [StoredContext] = []
        for context in try await source.contexts() {
            if let existing = try await target.context(context.name), existing.generation >= context.generation {
                outcome.kept.append(context.name)
            } else {
                copies.append(context)
                outcome.imported.append(context.name)
            }
        }
        if !copies.isEmpty { try await target.importContexts(copies) }
        return outcome
    }
}
