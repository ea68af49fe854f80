//! WeChat Pay's trade bill (`shared/spec/wechat.md` §E.3): UTF-8 with a BOM, CRLF lines, a
//! header row, one row per payment or refund with every field prefixed by a back-tick, then the
//! summary header and the summary row. Read by header name (column orders differ between bill
//! types), amounts in yuan parsed with integer arithmetic into fen, and the summary checked
//! against the rows (a truncated file fails). The sandbox writes bills with [`render`].

use std::collections::HashMap;

/// The ALL bill's detail columns, in WeChat's order.
pub const DETAIL_HEADER: [&str; 27] = [
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
];

/// The ALL bill's summary columns.
pub const SUMMARY_HEADER: [&str; 7] = [
    "总交易单数",
    "应结订单总金额",
    "退款总金额",
    "充值券退款总金额",
    "手续费总金额",
    "订单总金额",
    "申请退款总金额",
];

/// One payment or refund of the bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillRow {
    /// 交易时间 (`2026-12-06 12:00:05`, Beijing).
    pub trade_time: String,
    /// 公众账号ID.
    pub appid: String,
    /// 商户号.
    pub mchid: String,
    /// 微信订单号.
    pub transaction_id: String,
    /// 商户订单号.
    pub out_trade_no: String,
    /// 交易状态: `SUCCESS` or `REFUND` (or `REVOKED`).
    pub trade_state: String,
    /// 应结订单金额, fen.
    pub settlement_fen: i64,
    /// 退款金额, fen.
    pub refund_fen: i64,
    /// 订单金额, fen.
    pub order_fen: i64,
    /// 申请退款金额, fen.
    pub refund_applied_fen: i64,
    /// 商户数据包 (`attach`).
    pub attach: String,
}

/// The bill's summary row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillSummary {
    /// 总交易单数.
    pub count: i64,
    /// 应结订单总金额, fen.
    pub settlement_fen: i64,
    /// 退款总金额, fen.
    pub refund_fen: i64,
    /// 订单总金额, fen.
    pub order_fen: i64,
    /// 申请退款总金额, fen.
    pub refund_applied_fen: i64,
}

/// A parsed and checked bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bill {
    /// Payments and refunds.
    pub rows: Vec<BillRow>,
    /// The summary (equal to the rows' sums).
    pub summary: BillSummary,
}

/// Why a bill is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillError {
    /// Not UTF-8, or too few lines to be a bill.
    #[error("not a bill: {0}")]
    Format(String),
    /// A header lacks a column the hub reads.
    #[error("the bill has no `{0}` column")]
    MissingColumn(String),
    /// A row cannot be read.
    #[error("line {line}: {reason}")]
    Row {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The summary disagrees with the rows (a truncated or altered file).
    #[error("the summary does not match the rows: {0}")]
    SummaryMismatch(String),
}

/// Yuan as WeChat writes them (`12.34`, `0.01`, `45.0`, `0.00000`) to fen, with integer
/// arithmetic: digits beyond the second decimal must be zeros.
pub fn yuan_to_fen(text: &str) -> Option<i64> {
    let text = text.trim();
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if fraction.len() > 2 && fraction[2..].bytes().any(|b| b != b'0') {
        return None;
    }
    let cents: String = fraction.chars().chain("00".chars()).take(2).collect();
    let fen = whole
        .parse::<i64>()
        .ok()?
        .checked_mul(100)?
        .checked_add(cents.parse::<i64>().ok()?)?;
    Some(if negative { -fen } else { fen })
}

/// Fen as WeChat writes yuan (`12.34`).
pub fn fen_to_yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let fen = fen.unsigned_abs();
    format!("{sign}{}.{:02}", fen / 100, fen % 100)
}

fn field(line: &str) -> impl Iterator<Item = &str> {
    line.split(',')
        .map(|value| value.strip_prefix('`').unwrap_or(value))
}

/// Parses and checks a bill (the uncompressed bytes).
pub fn parse(bytes: &[u8]) -> Result<Bill, BillError> {
    let text = std::str::from_utf8(bytes).map_err(|_| BillError::Format("not UTF-8".into()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .filter(|line| !line.is_empty())
        .collect();
    if lines.len() < 3 {
        return Err(BillError::Format(format!("{} lines", lines.len())));
    }
    let header: Vec<&str> = lines[0].split(',').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|column| *column == name)
            .ok_or_else(|| BillError::MissingColumn(name.to_owned()))
    };
    let at: HashMap<&str, usize> = [
        "交易时间",
        "公众账号ID",
        "商户号",
        "微信订单号",
        "商户订单号",
        "交易状态",
        "应结订单金额",
        "退款金额",
        "订单金额",
        "申请退款金额",
        "商户数据包",
    ]
    .into_iter()
    .map(|name| column(name).map(|index| (name, index)))
    .collect::<Result<_, _>>()?;
    let summary_at = lines
        .iter()
        .rposition(|line| line.starts_with("总交易单数"))
        .ok_or_else(|| BillError::Format("no summary".into()))?;
    if summary_at + 2 != lines.len() {
        return Err(BillError::Format(
            "the summary must be the last two lines".into(),
        ));
    }
    let mut rows = Vec::with_capacity(summary_at.saturating_sub(1));
    for (index, line) in lines[1..summary_at].iter().enumerate() {
        let line_number = index + 2;
        let values: Vec<&str> = field(line).collect();
        if values.len() != header.len() {
            return Err(BillError::Row {
                line: line_number,
                reason: format!("{} fields, the header has {}", values.len(), header.len()),
            });
        }
        let text = |name: &str| values[at[name]].to_owned();
        let money = |name: &str| {
            yuan_to_fen(values[at[name]]).ok_or_else(|| BillError::Row {
                line: line_number,
                reason: format!("`{name}` is not an amount: {:?}", values[at[name]]),
            })
        };
        rows.push(BillRow {
            trade_time: text("交易时间"),
            appid: text("公众账号ID"),
            mchid: text("商户号"),
            transaction_id: text("微信订单号"),
            out_trade_no: text("商户订单号"),
            trade_state: text("交易状态"),
            settlement_fen: money("应结订单金额")?,
            refund_fen: money("退款金额")?,
            order_fen: money("订单金额")?,
            refund_applied_fen: money("申请退款金额")?,
            attach: text("商户数据包"),
        });
    }
    let summary_header: Vec<&str> = lines[summary_at].split(',').collect();
    let summary_values: Vec<&str> = field(lines[summary_at + 1]).collect();
    if summary_values.len() != summary_header.len() {
        return Err(BillError::Format(
            "the summary row does not fit its header".into(),
        ));
    }
    let summary_value = |name: &str| -> Result<&str, BillError> {
        summary_header
            .iter()
            .position(|column| *column == name)
            .map(|index| summary_values[index])
            .ok_or_else(|| BillError::MissingColumn(name.to_owned()))
    };
    let summary_money = |name: &str| -> Result<i64, BillError> {
        let value = summary_value(name)?;
        yuan_to_fen(value).ok_or_else(|| BillError::Format(format!("`{name}` is not an amount")))
    };
    // Counts are integers; the sandbox of WeChat has been seen to print `45.0`.
    let count_text = summary_value("总交易单数")?;
    let count = count_text
        .split_once('.')
        .filter(|(_, fraction)| fraction.bytes().all(|b| b == b'0'))
        .map_or(count_text, |(whole, _)| whole)
        .parse::<i64>()
        .map_err(|_| BillError::Format("`总交易单数` is not a count".into()))?;
    let summary = BillSummary {
        count,
        settlement_fen: summary_money("应结订单总金额")?,
        refund_fen: summary_money("退款总金额")?,
        order_fen: summary_money("订单总金额")?,
        refund_applied_fen: summary_money("申请退款总金额")?,
    };
    let sum = |f: fn(&BillRow) -> i64| rows.iter().map(f).sum::<i64>();
    let checks = [
        ("总交易单数", rows.len() as i64, summary.count),
        (
            "应结订单总金额",
            sum(|r| r.settlement_fen),
            summary.settlement_fen,
        ),
        ("退款总金额", sum(|r| r.refund_fen), summary.refund_fen),
        ("订单总金额", sum(|r| r.order_fen), summary.order_fen),
        (
            "申请退款总金额",
            sum(|r| r.refund_applied_fen),
            summary.refund_applied_fen,
        ),
    ];
    for (name, rows_say, summary_says) in checks {
        if rows_say != summary_says {
            return Err(BillError::SummaryMismatch(format!(
                "{name}: the rows add up to {rows_say}, the summary says {summary_says}"
            )));
        }
    }
    Ok(Bill { rows, summary })
}

/// Writes a bill as WeChat does: BOM, CRLF, back-ticked fields, the summary last.
pub fn render(rows: &[BillRow]) -> Vec<u8> {
    let mut out = String::from("\u{feff}");
    out.push_str(&DETAIL_HEADER.join(","));
    out.push_str("\r\n");
    for row in rows {
        let refund = row.trade_state == "REFUND";
        let values: [String; 27] = [
            row.trade_time.clone(),
            row.appid.clone(),
            row.mchid.clone(),
            "0".into(),
            String::new(),
            row.transaction_id.clone(),
            row.out_trade_no.clone(),
            "oSandboxPayer".into(),
            "NATIVE".into(),
            row.trade_state.clone(),
            "OTHERS".into(),
            "CNY".into(),
            fen_to_yuan(row.settlement_fen),
            "0.00".into(),
            if refund {
                format!(
                    "50300{}",
                    &row.transaction_id[4.min(row.transaction_id.len())..]
                )
            } else {
                "0".into()
            },
            if refund {
                format!("R{}", row.out_trade_no)
            } else {
                "0".into()
            },
            fen_to_yuan(row.refund_fen),
            "0.00".into(),
            if refund {
                "ORIGINAL".into()
            } else {
                String::new()
            },
            if refund {
                "SUCCESS".into()
            } else {
                String::new()
            },
            "Hub credits".into(),
            row.attach.clone(),
            "0.00000".into(),
            "0.60%".into(),
            fen_to_yuan(row.order_fen),
            fen_to_yuan(row.refund_applied_fen),
            String::new(),
        ];
        let line: Vec<String> = values.iter().map(|value| format!("`{value}")).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    let sum = |f: fn(&BillRow) -> i64| rows.iter().map(f).sum::<i64>();
    out.push_str(&SUMMARY_HEADER.join(","));
    out.push_str("\r\n");
    let summary = [
        rows.len().to_string(),
        fen_to_yuan(sum(|r| r.settlement_fen)),
        fen_to_yuan(sum(|r| r.refund_fen)),
        "0.00".into(),
        "0.00000".into(),
        fen_to_yuan(sum(|r| r.order_fen)),
        fen_to_yuan(sum(|r| r.refund_applied_fen)),
    ];
    let line: Vec<String> = summary.iter().map(|value| format!("`{value}")).collect();
    out.push_str(&line.join(","));
    out.push_str("\r\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bill in WeChat's real format (the shape of the WeChat sandbox's `bill.ALL.csv`): BOM,
    /// CRLF, back-ticks, empty fields as a lone back-tick, a refund row, the summary.
    const REAL_FORMAT: &str = "\u{feff}交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\r\n\
`2019-06-10 11:46:23,`wxd678efh567hg6787,`1230000109,`0,`,`4200000344201906109478412512,`1217752501201407033233368018,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`SUCCESS,`OTHERS,`CNY,`0.01,`0.00,`0,`0,`0.00,`0.00,`,`,`Image形象店-深圳腾大-QQ公仔,`自定义数据说明,`0.00000,`0.60%,`0.01,`0.00,`\r\n\
`2019-06-10 12:02:11,`wxd678efh567hg6787,`1230000109,`0,`,`4200000343201906108956402107,`1217752501201407033233368019,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`SUCCESS,`OTHERS,`CNY,`12.34,`0.00,`0,`0,`0.00,`0.00,`,`,`Image形象店,`,`0.07000,`0.60%,`12.34,`0.00,`\r\n\
`2019-06-10 15:20:45,`wxd678efh567hg6787,`1230000109,`0,`,`4200000344201906109478412512,`1217752501201407033233368018,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50300000652019061009864447251,`R1217752501201407033233368018,`0.01,`0.00,`ORIGINAL,`SUCCESS,`Image形象店-深圳腾大-QQ公仔,`自定义数据说明,`0.00000,`0.60%,`0.00,`0.01,`\r\n\
总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n\
`3.0,`12.35,`0.01,`0.00,`0.07000,`12.35,`0.01\r\n";

    #[test]
    fn a_real_format_bill_is_read_by_header_name_in_fen() {
        let bill = parse(REAL_FORMAT.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bill.rows.len(), 3);
        let first = &bill.rows[0];
        assert_eq!(first.out_trade_no, "1217752501201407033233368018");
        assert_eq!(first.transaction_id, "4200000344201906109478412512");
        assert_eq!(first.trade_state, "SUCCESS");
        assert_eq!((first.order_fen, first.settlement_fen), (1, 1));
        assert_eq!(first.attach, "自定义数据说明");
        assert_eq!(bill.rows[1].order_fen, 1234);
        assert_eq!(
            bill.rows[1].attach, "",
            "an empty field is a lone back-tick"
        );
        assert_eq!(bill.rows[2].trade_state, "REFUND");
        assert_eq!(bill.rows[2].refund_fen, 1);
        assert_eq!(bill.summary.count, 3);
        assert_eq!(bill.summary.order_fen, 1235);
    }

    #[test]
    fn a_truncated_or_altered_bill_is_refused() {
        // A payment row cut out: the summary no longer adds up.
        let lines: Vec<&str> = REAL_FORMAT.split("\r\n").collect();
        let truncated = [&lines[..2], &lines[3..]].concat().join("\r\n");
        assert!(matches!(
            parse(truncated.as_bytes()),
            Err(BillError::SummaryMismatch(_))
        ));
        // An amount changed.
        let altered = REAL_FORMAT.replace("`12.34,`0.00,`0,", "`12.44,`0.00,`0,");
        assert!(matches!(
            parse(altered.as_bytes()),
            Err(BillError::SummaryMismatch(_))
        ));
        // The file ends in the middle of the rows.
        let cut = &REAL_FORMAT[..REAL_FORMAT.len() / 2];
        assert!(parse(cut.as_bytes()).is_err());
        // A float-looking or malformed amount is not guessed at.
        let bad = REAL_FORMAT.replace("`12.34,`0.00,`0,", "`12.345,`0.00,`0,");
        assert!(matches!(
            parse(bad.as_bytes()),
            Err(BillError::Row { line: 3, .. })
        ));
        assert!(parse(b"\xff\xfe").is_err());
    }

    #[test]
    fn yuan_become_fen_without_floats() {
        for (text, fen) in [
            ("0.01", Some(1)),
            ("12.34", Some(1234)),
            ("45.0", Some(4500)),
            ("0.00000", Some(0)),
            ("7", Some(700)),
            ("0.1", Some(10)),
            ("0.105", None),
            ("1e3", None),
            ("", None),
            (".5", None),
            ("99999999999999999999", None),
        ] {
            assert_eq!(yuan_to_fen(text), fen, "{text}");
        }
        assert_eq!(fen_to_yuan(1234), "12.34");
        assert_eq!(fen_to_yuan(5), "0.05");
    }

    #[test]
    fn what_render_writes_parse_reads_back() {
        let rows = vec![
            BillRow {
                trade_time: "2026-12-06 23:59:59".into(),
                appid: "wx1".into(),
                mchid: "19".into(),
                transaction_id: "4200000000000000000000000001".into(),
                out_trade_no: "abc123".into(),
                trade_state: "SUCCESS".into(),
                settlement_fen: 990,
                refund_fen: 0,
                order_fen: 990,
                refund_applied_fen: 0,
                attach: "order".into(),
            },
            BillRow {
                trade_state: "REFUND".into(),
                settlement_fen: 0,
                refund_fen: 100,
                order_fen: 0,
                refund_applied_fen: 100,
                ..BillRow {
                    trade_time: "2026-12-06 23:59:59".into(),
                    appid: "wx1".into(),
                    mchid: "19".into(),
                    transaction_id: "4200000000000000000000000001".into(),
                    out_trade_no: "abc123".into(),
                    trade_state: String::new(),
                    settlement_fen: 0,
                    refund_fen: 0,
                    order_fen: 0,
                    refund_applied_fen: 0,
                    attach: "order".into(),
                }
            },
        ];
        let bytes = render(&rows);
        assert!(bytes.starts_with(&[0xEF, 0xBB, 0xBF]));
        let bill = parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bill.rows, rows);
        assert!(parse(&render(&[])).is_ok(), "an empty bill");
    }
}
