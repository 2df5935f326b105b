/// bunq's list paging (doc.bunq.com "Pagination"): items newest first; `count` 1–200, default 10; `newer_id`
/// lists the items just newer than an id, `older_id` those just older; every list carries a `Pagination` whose
/// URLs are null when there is nothing that way, and whose `future_url` is set only on the page holding the
/// newest item.
struct ListPage: Sendable {
    static let defaultCount = 10
    static let maxCount = 200

    /// `count` as the caller gave it (repeated in the URLs), nil when not given.
    let count: Int?
    let newerId: Int?
    let olderId: Int?

    init(count: Int? = nil, newerId: Int? = nil, olderId: Int? = nil) {
        self.count = count
        self.newerId = newerId
        self.olderId = olderId
    }

    /// Reads `count`, `newer_id` and `older_id` from a query, or a 400 naming the parameter.
    static func parse(_ query: [String: String]) throws(SandboxError) -> ListPage {
        func id(_ name: String) throws(SandboxError) -> Int? {
            guard let text = query[name] else { return nil }
            guard let value = Int(text), value >= 0 else {
                throw .badRequest("Parameter \(name) must be a non-negative integer.")
            }
            return value
        }
        var count: Int?
        if let text = query["count"] {
            guard let value = Int(text), (1...maxCount).contains(value) else {
                throw .badRequest("Parameter count must be an integer from 1 to \(maxCount).")
            }
            count = value
        }
        let page = ListPage(count: count, newerId: try id("newer_id"), olderId: try id("older_id"))
        if page.newerId != nil, page.olderId != nil {
            throw .badRequest("Give at most one of the parameters newer_id and older_id.")
        }
        return page
    }

    /// The page of `items` (any order) this request asks for, newest first, and the `Pagination` object for a
    /// list at `path` (e.g. `/v1/user/7/monetary-account`).
    func apply<T>(_ items: [T], id: (T) -> Int, path: String) -> (page: [T], pagination: BunqJSON) {
        let all = items.sorted { id($0) > id($1) }
        let limit = count ?? Self.defaultCount
        let page: [T]
        if let newerId {
            page = Array(all.filter { id($0) > newerId }.suffix(limit))
        } else if let olderId {
            page = Array(all.filter { id($0) < olderId }.prefix(limit))
        } else {
            page = Array(all.prefix(limit))
        }
        func url(_ name: String, _ value: Int) -> BunqJSON {
            .string(path + "?" + (count.map { "count=\($0)&" } ?? "") + "\(name)=\(value)")
        }
        guard let newest = page.first.map(id), let oldest = page.last.map(id) else {
            // Nothing on this page: a poll for newer items can go on from where it asked.
            return ([], .object([("future_url", newerId.map { url("newer_id", $0) } ?? .null),
                                 ("newer_url", .null), ("older_url", .null)]))
        }
        let hasNewer = all.contains { id($0) > newest }
        let hasOlder = all.contains { id($0) < oldest }
        return (page, .object([
            ("future_url", hasNewer ? .null : url("newer_id", newest)),
            ("newer_url", hasNewer ? url("newer_id", newest) : .null),
            ("older_url", hasOlder ? url("older_id", oldest) : .null),
        ]))
    }
}
