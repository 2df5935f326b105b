import Foundation

/// The public face of a monetary account on either side of a payment: bunq's `LabelMonetaryAccount`. An account
/// of the emulator's users shows its owner; an account elsewhere shows only the IBAN and the name the payer gave.
struct AccountLabel: Sendable {
    let iban: String
    let displayName: String
    /// The owner's public UUID, for accounts the emulator holds.
    let userUUID: String?

    var json: BunqJSON {
        .object([
            ("iban", .string(iban)),
            ("is_light", userUUID == nil ? .null : false),
            ("display_name", .string(displayName)),
            ("avatar", .null),
            ("label_user", .object([
                ("uuid", userUUID.map(BunqJSON.string) ?? .null),
                ("display_name", .string(displayName)),
                ("country", "NL"),
                ("avatar", .null),
                ("public_nick_name", .string(displayName)),
            ])),
            ("country", "NL"),
        ])
    }
}

/// One side of a money movement: a `Payment` on one monetary account. A payment between two of the emulator's
/// accounts is two of these, one on each account, each with its own id, as at bunq.
struct PaymentRecord: Sendable {
    /// bunq's payment types: `BUNQ` between bunq accounts, `EBA_SCT` (a SEPA credit transfer) to anywhere else.
    enum Kind: String, Sendable {
        case bunq = "BUNQ"
        case sepa = "EBA_SCT"
    }

    let id: Int
    let accountId: Int
    let created: Date
    /// Negative when money left the account.
    let amount: Money
    let alias: AccountLabel
    let counterparty: AccountLabel
    let description: String
    let kind: Kind
    /// `PAYMENT`, or `REQUEST` when it paid a request-inquiry.
    let subType: String
    let balanceAfter: Money
    let batchId: Int?
    let merchantReference: String?

    var json: BunqJSON {
        let created = BunqTime.format(self.created)
        return .object([
            ("id", .int(id)),
            ("created", .string(created)),
            ("updated", .string(created)),
            ("monetary_account_id", .int(accountId)),
            ("amount", amount.json),
            ("alias", alias.json),
            ("counterparty_alias", counterparty.json),
            ("description", .string(description)),
            ("type", .string(kind.rawValue)),
            ("sub_type", .string(subType)),
            ("merchant_reference", merchantReference.map(BunqJSON.string) ?? .null),
            ("batch_id", batchId.map(BunqJSON.int) ?? .null),
            ("scheduled_id", .null),
            ("address_shipping", .null),
            ("address_billing", .null),
            ("geolocation", .null),
            ("attachment", []),
            ("request_reference_split_the_bill", []),
            ("balance_after_mutation", balanceAfter.json),
            ("payment_auto_allocate_instance", .null),
        ])
    }
}

/// A `PaymentBatch`: payments made in one request, all or none.
struct PaymentBatchRecord: Sendable {
    let id: Int
    let accountId: Int
    let created: Date
    /// The sending side of each payment, in the order they were given.
    let paymentIds: [Int]
}

/// A `RequestInquiry`: money asked of a counterparty. Only `sugardaddy@bunq.com` answers in the emulator (at once,
/// up to 500.00 EUR), as in bunq's sandbox; others stay `PENDING`.
struct RequestInquiryRecord: Sendable {
    enum Status: String, Sendable {
        case pending = "PENDING"
        case accepted = "ACCEPTED"
        case rejected = "REJECTED"
    }

    let id: Int
    let accountId: Int
    let created: Date
    var updated: Date
    var responded: Date?
    let amount: Money
    var amountResponded: Money?
    let alias: AccountLabel
    let counterparty: AccountLabel
    let description: String
    let merchantReference: String?
    let allowBunqme: Bool
    var status: Status

    var json: BunqJSON {
        .object([
            ("id", .int(id)),
            ("created", .string(BunqTime.format(created))),
            ("updated", .string(BunqTime.format(updated))),
            ("time_responded", responded.map { .string(BunqTime.format($0)) } ?? .null),
            ("time_expiry", .null),
            ("monetary_account_id", .int(accountId)),
            ("amount_inquired", amount.json),
            ("amount_responded", amountResponded?.json ?? .null),
            ("status", .string(status.rawValue)),
            ("description", .string(description)),
            ("merchant_reference", merchantReference.map(BunqJSON.string) ?? .null),
            ("user_alias_created", alias.json),
            ("user_alias_revoked", .null),
            ("counterparty_alias", counterparty.json),
            ("bunqme_share_url", .null),
            ("batch_id", .null),
            ("scheduled_id", .null),
            ("minimum_age", .null),
            ("require_address", "NONE"),
            ("redirect_url", .null),
            ("address_shipping", .null),
            ("address_billing", .null),
            ("geolocation", .null),
            ("reference_split_the_bill", .null),
            ("allow_bunqme", .bool(allowBunqme)),
        ])
    }
}

/// An `Event`: something that happened to a user's account, shown in the app's overview and listed by
/// `GET /v1/user/{id}/event`, with the object it is about inside.
struct EventRecord: Sendable {
    enum Subject: Sendable {
        case payment(Int)
        case requestInquiry(Int)
        case draftPayment(Int)
    }

    let id: Int
    /// The account holder (for an OAuth session, the granting user).
    let userId: Int
    let accountId: Int
    let created: Date
    let subject: Subject
}
