import DynamicJSON
import Foundation

/// A `NotificationFilterUrl`: events of `category` are POSTed to `target` as bunq's `NotificationUrl`.
struct NotificationFilter: Sendable {
    let id: Int
    let created: Date
    let category: String
    let target: String
    /// The server key of the installation that set the filter: its callbacks are signed with that key, so the
    /// application verifies them with the server key its installation got.
    let serverKeyIndex: Int

    var json: BunqJSON {
        .object([("id", .int(id)), ("created", .string(BunqTime.format(created))),
                 ("updated", .string(BunqTime.format(created))), ("category", .string(category)),
                 ("notification_target", .string(target))])
    }
}

/// Notification filters at user and monetary-account level, and the callbacks they owe: made under the store's
/// lock when an event happens (`outbox`), delivered by `CallbackDelivery` outside it.
extension SandboxStore {
    /// bunq's notification categories (doc.bunq.com "Callbacks").
    static let notificationCategories = [
        "BILLING", "BUNQME_TAB", "CARD_TRANSACTION_FAILED", "CARD_TRANSACTION_SUCCESSFUL", "CHAT", "DRAFT_PAYMENT",
        "IDEAL", "MUTATION", "OAUTH", "PAYMENT", "REQUEST", "SCHEDULE_RESULT", "SCHEDULE_STATUS", "SHARE", "SOFORT",
        "SUPPORT", "TAB_RESULT",
    ]

    /// bunq calls back over HTTPS only. The emulator also accepts `http://` for a loopback host, where a developer's
    /// receiver runs, and says so when it refuses any other `http://` target.
    static func checkTarget(_ text: String, field: String) throws(SandboxError) {
        guard let url = URLComponents(string: text), let scheme = url.scheme?.lowercased(), let host = url.host,
              !host.isEmpty else { throw .badRequest("Field \(field) must be an absolute https:// URL.") }
        switch scheme {
        case "https":
            return
        case "http":
            let bare = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]")).lowercased()
            if bare == "localhost" || bare == "::1" || bare.hasPrefix("127.") { return }
            throw .badRequest("Field \(field): bunq calls back over HTTPS only; the emulator accepts http:// for "
                + "loopback targets alone (127.0.0.0/8, ::1, localhost), not \(host).")
        default:
            throw .badRequest("Field \(field) must be an https:// URL.")
        }
    }

    /// `POST …/notification-filter-url` `{"notification_filters": [{"category", "notification_target"}]}`:
    /// replaces the user's (`accountId` nil) or the account's filters; answers with the new set.
    mutating func setNotificationFilters(_ call: CallContext, account: Bool) throws(SandboxError) -> BunqJSON {
        let session = try requireOwnUser(call)
        var accountId: Int?
        if account { accountId = try requireOwnAccount(call).account.id }
        guard let installation = call.installation else { throw .insufficientAuthentication }
        guard let list = call.body["notification_filters"]?.array else {
            throw .badRequest("Field notification_filters is required: a list of {category, notification_target}.")
        }
        var filters: [NotificationFilter] = []
        for (index, item) in list.enumerated() {
            let field = "notification_filters[\(index)]"
            guard let category = item["category"]?.string else { throw .badRequest("Field \(field).category is required.") }
            guard Self.notificationCategories.contains(category) else {
                throw .badRequest("Field \(field).category must be one of "
                    + Self.notificationCategories.joined(separator: ", ") + ", not \(category).")
            }
            guard let target = item["notification_target"]?.string else {
                throw .badRequest("Field \(field).notification_target is required.")
            }
            try Self.checkTarget(target, field: "\(field).notification_target")
            filters.append(NotificationFilter(id: nextId("notification-filter", base: 80_000), created: call.now,
                                              category: category, target: target,
                                              serverKeyIndex: installation.serverKeyIndex))
        }
        if let accountId {
            accountFilters[accountId] = filters
        } else {
            userFilters[session.userId] = filters
        }
        return .response(filters.map { ("NotificationFilterUrl", $0.json) })
    }

    func notificationFilters(_ call: CallContext, account: Bool) throws(SandboxError) -> BunqJSON {
        let session = try requireOwnUser(call)
        var filters = userFilters[session.userId]
        if account { filters = accountFilters[try requireOwnAccount(call).account.id] }
        return .response((filters ?? []).map { ("NotificationFilterUrl", $0.json) })
    }

    /// Queues a callback for every filter of `category` that covers `account`: the account's own, its holder's
    /// user-level ones, and those set through an OAuth grant the holder gave.
    mutating func notify(_ category: String, _ eventType: String, account: MonetaryAccount, object: (String, BunqJSON)) {
        let holder = account.ownerId
        var matching = accountFilters[account.id] ?? []
        for (userId, filters) in userFilters where userId == holder || apiKeyUsers[userId]?.grantingUserId == holder {
            matching += filters
        }
        for filter in matching where filter.category == category {
            let body = BunqJSON.object([("NotificationUrl", .object([
                ("target_url", .string(filter.target)),
                ("category", .string(category)),
                ("event_type", .string(eventType)),
                ("object", .object([object])),
            ]))]).serialized
            guard let signature = try? serverKeys.signature(at: filter.serverKeyIndex, for: body) else { continue }
            outbox.append(CallbackJob(target: filter.target, category: category, eventType: eventType, body: body,
                                      signature: Data(signature).base64EncodedString()))
        }
    }

    /// The callbacks queued since the last call, for delivery outside the lock.
    mutating func takeCallbacks() -> [CallbackJob] {
        defer { outbox.removeAll() }
        return outbox
    }
}
