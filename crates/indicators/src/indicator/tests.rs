use super::*;

fn run(spec: &str, xs: &[f64]) -> Vec<Option<f64>> {
    let mut ind = spec.parse::<IndicatorSpec>().unwrap().build();
    xs.iter()
        .map(|&x| ind.update(&Input::price(x)).map(|v| v[0]))
        .collect()
}

/// Every output of `spec` over bars (`(high, low, close)`).
fn run_bars(spec: &str, bars: &[(f64, f64, f64)]) -> Vec<Option<Vec<f64>>> {
    let mut ind = spec.parse::<IndicatorSpec>().unwrap().build();
    bars.iter()
        .map(|&(h, l, c)| {
            ind.update(&Input::bar(0, c, h, l, c, 1.0))
                .map(<[f64]>::to_vec)
        })
        .collect()
}
/// Every output of `spec` over bars (`(high, low, close)`), `None` while that output warms up.
fn run_outputs(spec: &str, bars: &[(f64, f64, f64)]) -> Vec<Vec<Option<f64>>> {
    let mut ind = spec.parse::<IndicatorSpec>().unwrap().build();
    bars.iter()
        .map(|&(h, l, c)| {
            let mut out = vec![None; ind.outputs().len()];
            ind.update_into(&Input::bar(0, c, h, l, c, 1.0), &mut out);
            out
        })
        .collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn sma_hand_computed() {
    let out = run("sma(3)", &[1.0, 2.0, 3.0, 4.0, 10.0]);
    assert_eq!(
        out,
        vec![None, None, Some(2.0), Some(3.0), Some(17.0 / 3.0)]
    );
}

#[test]
fn ema_hand_computed() {
    // k = 2 / (3 + 1) = 0.5; seed = sma(1, 2, 3) = 2; then 0.5*4 + 0.5*2 = 3; 0.5*10 + 0.5*3 = 6.5.
    let out = run("ema(3)", &[1.0, 2.0, 3.0, 4.0, 10.0]);
    assert_eq!(out, vec![None, None, Some(2.0), Some(3.0), Some(6.5)]);
}

/// The closing prices of StockCharts' ChartSchool RSI worksheet (the classic Wilder
/// example).
const CLOSES: [f64; 33] = [
    44.34, 44.09, 44.15, 43.61, 44.33, 44.83, 45.10, 45.42, 45.84, 46.08, 45.89, 46.03, 45.61,
    46.28, 46.28, 46.00, 46.03, 46.41, 46.22, 45.64, 46.21, 46.25, 45.71, 46.45, 45.78, 45.35,
    44.03, 44.18, 44.22, 44.57, 43.42, 42.66, 43.13,
];

fn assert_matches(spec: &str, warmup: usize, reference: &[f64]) {
    let out = run(spec, &CLOSES);
    assert!(
        out[..warmup].iter().all(Option::is_none),
        "{spec} warm too early"
    );
    for (i, want) in reference.iter().enumerate() {
        let got = out[warmup + i].unwrap();
        assert!(
            (got - want).abs() <= 1e-9 * want.abs(),
            "{spec}[{}] = {got}, TA-Lib {want}",
            warmup + i
        );
    }
}

/// Reference values computed by TA-Lib 0.8.2 (Python package `ta-lib`, `talib.RSI(c, 14)`)
/// on `CLOSES`. StockCharts' worksheet prints 70.53, 66.32, ... because it rounds its
/// intermediate averages; TA-Lib does not.
#[test]
fn rsi_matches_talib() {
    let talib = [
        70.46413502109704,
        66.24961855355505,
        66.48094183471265,
        69.34685316290864,
        66.29471265892623,
        57.91502067008556,
        62.88071830996241,
        63.208788718287764,
        56.01158478954756,
        62.33992931089788,
        54.67097137765514,
        50.386815195114224,
        40.019423791313564,
        41.49263540422281,
        41.9024296784581,
        45.499497238680405,
        37.32277831337994,
        33.09048257272338,
        37.788771982057824,
    ];
    assert_matches("rsi(14)", 14, &talib);
    // The published worksheet agrees to its printed precision (within its rounding).
    let published = [
        70.53, 66.32, 66.55, 69.41, 66.36, 57.97, 62.93, 63.26, 56.06,
    ];
    for (t, p) in talib.iter().zip(published) {
        assert!((t - p).abs() < 0.1);
    }
}

/// `talib.EMA(c, 10)` and `talib.SMA(c, 10)` on `CLOSES` (TA-Lib 0.8.2).
#[test]
fn ema_and_sma_match_talib() {
    let ema = [
        44.779,
        44.981,
        45.171727272727274,
        45.251413223140496,
        45.43842900075131,
        45.59144190970562,
        45.665725198850055,
        45.73195698087732,
        45.85523752980872,
        45.92155797893441,
        45.87036561912815,
        45.93211732474121,
        45.98991417478827,
        45.93902068846313,
        46.03192601783347,
        45.98612128731829,
        45.870462871442236,
        45.53583325845274,
        45.289318120552245,
        45.0948966440882,
        44.99946089061762,
        44.7122861832326,
        44.33914324082667,
        44.11929901522182,
    ];
    let sma = [
        44.779,
        44.934000000000005,
        45.128,
        45.274,
        45.541,
        45.736000000000004,
        45.853,
        45.946000000000005,
        46.045,
        46.083000000000006,
        46.039,
        46.071000000000005,
        46.093,
        46.103,
        46.12,
        46.06999999999999,
        46.004999999999995,
        45.80499999999999,
        45.582,
        45.382000000000005,
        45.275000000000006,
        44.99600000000001,
        44.637000000000015,
        44.37900000000001,
    ];
    assert_matches("ema(10)", 9, &ema);
    assert_matches("sma(10)", 9, &sma);
}

#[test]
fn rsi_of_a_flat_series_is_zero_like_talib_and_of_a_rising_one_is_100() {
    assert_eq!(run("rsi(3)", &[5.0; 5])[4], Some(0.0));
    assert_eq!(run("rsi(3)", &[1.0, 2.0, 3.0, 4.0])[3], Some(100.0));
}

#[test]
fn sma_stays_exact_over_many_updates() {
    let mut s = Sma::new(20);
    let mut last = None;
    for i in 0..200_000u32 {
        last = s.update(1.1 + f64::from(i % 97) * 1e-5);
    }
    let want: f64 = (199_980..200_000u32)
        .map(|i| 1.1 + f64::from(i % 97) * 1e-5)
        .sum::<f64>()
        / 20.0;
    assert!(close(last.unwrap(), want, 1e-14));
}

#[test]
fn specs_parse_and_reject() {
    assert_eq!(
        "EMA( 12 )".parse::<IndicatorSpec>().unwrap().to_string(),
        "ema(12)"
    );
    for bad in ["ema", "ema(0)", "ema(x)", "foo(3)", "ema(3"] {
        assert!(bad.parse::<IndicatorSpec>().is_err(), "{bad}");
    }
}

#[test]
fn multi_output_specs_parse_with_defaults_and_name_their_values() {
    let m: IndicatorSpec = "MACD".parse().unwrap();
    assert_eq!(m.to_string(), "macd(12,26,9)");
    assert_eq!(m.value_name(1), "macd(12,26,9).signal");
    assert_eq!(m.outputs(), ["macd", "signal", "hist"]);
    let b: IndicatorSpec = "bbands(20, 2.5)".parse().unwrap();
    assert_eq!(b.to_string(), "bbands(20,2.5)");
    assert_eq!(b.value_name(2), "bbands(20,2.5).lower");
    assert_eq!(
        "sma(20)".parse::<IndicatorSpec>().unwrap().value_name(0),
        "sma(20)"
    );
    assert_eq!("vwap".parse::<IndicatorSpec>().unwrap().to_string(), "vwap");
    assert_eq!(
        "vwap(30)".parse::<IndicatorSpec>().unwrap().to_string(),
        "vwap(30)"
    );
    for bad in [
        "macd(12,26,9,1)",
        "bbands(20,-1)",
        "stoch(1.5)",
        "sma()",
        "vwap(0)",
    ] {
        assert!(bad.parse::<IndicatorSpec>().is_err(), "{bad}");
    }
    for e in REGISTRY {
        let spec: IndicatorSpec = e
            .name
            .parse()
            .unwrap_or_else(|_| format!("{}(3)", e.name).parse().unwrap());
        assert_eq!(spec.build().outputs(), e.outputs, "{}", e.name);
    }
}

#[test]
fn wma_hand_computed_and_exact_over_many_updates() {
    let out = run("wma(3)", &[1.0, 2.0, 3.0, 4.0, 10.0]);
    assert_eq!(out[..2], [None, None]);
    assert!(close(out[2].unwrap(), 14.0 / 6.0, 1e-15));
    assert!(close(out[3].unwrap(), 20.0 / 6.0, 1e-15));
    assert!(close(out[4].unwrap(), (3.0 + 8.0 + 30.0) / 6.0, 1e-15));
    let xs: Vec<f64> = (0..100_000u32)
        .map(|i| 1.1 + f64::from(i % 89) * 1e-5)
        .collect();
    let got = run("wma(10)", &xs).last().copied().flatten().unwrap();
    let want: f64 = xs[xs.len() - 10..]
        .iter()
        .enumerate()
        .map(|(i, x)| x * (i + 1) as f64)
        .sum::<f64>()
        / 55.0;
    assert!(close(got, want, 1e-14));
}

/// TA-Lib's MACD by its definition, batch: EMAs seeded at input `slow − 1`, the fast one with
/// the mean of the last `fast` of the first `slow` inputs.
fn macd_reference(xs: &[f64], fast: usize, slow: usize, signal: usize) -> Vec<[f64; 3]> {
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (kf, ks, kg) = (
        2.0 / (fast + 1) as f64,
        2.0 / (slow + 1) as f64,
        2.0 / (signal + 1) as f64,
    );
    let mut f = mean(&xs[slow - fast..slow]);
    let mut s = mean(&xs[..slow]);
    let mut lines = vec![f - s];
    for &x in &xs[slow..] {
        f += kf * (x - f);
        s += ks * (x - s);
        lines.push(f - s);
    }
    let mut sig = mean(&lines[..signal]);
    let mut out = vec![[lines[signal - 1], sig, lines[signal - 1] - sig]];
    for &l in &lines[signal..] {
        sig += kg * (l - sig);
        out.push([l, sig, l - sig]);
    }
    out
}

#[test]
fn macd_seeds_like_talib() {
    let xs: Vec<f64> = (0..200)
        .map(|i| 100.0 + (f64::from(i) * 0.37).sin() * 5.0)
        .collect();
    let got = run_bars(
        "macd(5,9,4)",
        &xs.iter().map(|&x| (x, x, x)).collect::<Vec<_>>(),
    );
    let lookback = 9 + 4 - 2;
    assert!(got[..lookback].iter().all(Option::is_none));
    let want = macd_reference(&xs, 5, 9, 4);
    assert_eq!(got.len() - lookback, want.len());
    for (g, w) in got[lookback..].iter().zip(&want) {
        let g = g.as_ref().unwrap();
        for k in 0..3 {
            assert!(close(g[k], w[k], 1e-12), "{g:?} {w:?}");
        }
    }
    // Periods given the wrong way round are swapped, as TA-Lib does.
    let swapped = run_bars(
        "macd(9,5,4)",
        &xs.iter().map(|&x| (x, x, x)).collect::<Vec<_>>(),
    );
    assert_eq!(swapped, got);
}

#[test]
fn atr_and_true_range_hand_computed() {
    // TR: -, max(2, |10-12|, |10-10|)=2, max(1, |11-13|, |11-12|)=2, max(3, ..)=3
    let bars = [
        (11.0, 9.0, 10.0),
        (12.0, 10.0, 11.0),
        (13.0, 12.0, 12.5),
        (14.0, 11.0, 13.0),
    ];
    let out = run_bars("atr(2)", &bars);
    assert_eq!(out[..2], [None, None]);
    assert_eq!(out[2].as_deref(), Some(&[2.0][..]));
    assert_eq!(out[3].as_deref(), Some(&[2.5][..]));
}

#[test]
fn stoch_hand_computed_and_zero_on_a_flat_range() {
    let bars = [
        (10.0, 8.0, 9.0),
        (11.0, 9.0, 10.0),
        (12.0, 10.0, 12.0),
        (12.0, 9.0, 9.0),
    ];
    // fast %K(2): -, (10-8)/(11-8)=66.67, (12-9)/(12-9)=100, (9-9)/3=0; slow k(1), d(2).
    let out = run_bars("stoch(2,1,2)", &bars);
    assert_eq!(out[..2], [None, None]);
    let o = out[2].as_ref().unwrap();
    assert!(close(o[0], 100.0, 1e-12) && close(o[1], (200.0 / 3.0 + 100.0) / 2.0, 1e-12));
    let o = out[3].as_ref().unwrap();
    assert!(close(o[0], 0.0, 1e-12) && close(o[1], 50.0, 1e-12));
    let flat = run_bars("stoch(3,3,3)", &[(1.0, 1.0, 1.0); 10]);
    assert_eq!(flat[9].as_deref(), Some(&[0.0, 0.0][..]));
}

#[test]
fn cci_hand_computed() {
    // Typical prices 1, 2, 3: mean 2, mean deviation 2/3, cci = (3-2)/(0.015*2/3) = 100.
    let out = run("cci(3)", &[1.0, 2.0, 3.0]);
    assert_eq!(out[..2], [None, None]);
    assert!(close(out[2].unwrap(), 100.0, 1e-9));
}

#[test]
fn stddev_zscore_and_bbands_agree_with_a_two_pass_computation() {
    let xs: Vec<f64> = (0..5_000u32)
        .map(|i| 1.1 + f64::from((i * 7919) % 101) * 1e-5)
        .collect();
    let sd = run("stddev(20)", &xs);
    let z = run("zscore(20)", &xs);
    let bb = run_bars(
        "bbands(20,2)",
        &xs.iter().map(|&x| (x, x, x)).collect::<Vec<_>>(),
    );
    for i in 19..xs.len() {
        let w = &xs[i - 19..=i];
        let m = w.iter().sum::<f64>() / 20.0;
        let v = w.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / 20.0;
        assert!(close(sd[i].unwrap(), v.sqrt(), 1e-13), "{i}");
        assert!(close(z[i].unwrap(), (xs[i] - m) / v.sqrt(), 1e-7), "{i}");
        let b = bb[i].as_ref().unwrap();
        assert!(close(b[1], m, 1e-14) && close(b[0] - b[1], 2.0 * v.sqrt(), 1e-13));
    }
    // A flat window: deviation 0, z-score 0.
    assert_eq!(run("zscore(3)", &[2.0; 5])[4], Some(0.0));
    assert_eq!(run("stddev(3)", &[2.0; 5])[4], Some(0.0));
}

#[test]
fn adx_of_a_steady_rise_is_100_with_no_minus_di() {
    let bars: Vec<(f64, f64, f64)> = (0..40)
        .map(|i| {
            let b = 10.0 + f64::from(i);
            (b + 1.0, b, b + 0.5)
        })
        .collect();
    let out = run_outputs("adx(5)", &bars);
    // +DI and −DI from input 5 (TA-Lib's PLUS_DI/MINUS_DI lookback), the ADX from 9 (2·5 − 1).
    for (i, o) in out.iter().enumerate() {
        assert_eq!(o[0].is_some(), i >= 9, "adx at {i}");
        assert_eq!(
            (o[1].is_some(), o[2].is_some()),
            (i >= 5, i >= 5),
            "di at {i}"
        );
    }
    let o: Vec<f64> = out[39].iter().map(|v| v.unwrap()).collect();
    assert!(close(o[0], 100.0, 1e-9) && close(o[2], 0.0, 1e-12) && o[1] > 0.0);
    // A steady rise: +DM = 1 and TR = 1.5 per bar, so +DI = 200/3 from its first value on.
    assert!(close(out[5][1].unwrap(), 200.0 / 3.0, 1e-9) && out[5][2] == Some(0.0));
}

/// The Python `ta-lib` 0.8.2 package's `ADX`, `PLUS_DI` and `MINUS_DI` (period 3) on eight bars:
/// each output warm exactly where TA-Lib gives it a value (its own lookback: 5 for the ADX, 3
/// for +DI and −DI), with TA-Lib's values.
#[test]
fn adx_warms_each_output_when_ta_lib_gives_it_a_value() {
    let bars = [
        (10.0, 9.0, 9.5),
        (10.5, 9.2, 10.2),
        (10.4, 9.6, 9.8),
        (11.0, 9.9, 10.8),
        (10.9, 10.1, 10.3),
        (10.6, 9.7, 9.9),
        (11.2, 10.0, 11.1),
        (11.5, 10.8, 11.0),
    ];
    let nan = f64::NAN;
    let talib: [[f64; 8]; 3] = [
        [
            nan,
            nan,
            nan,
            nan,
            nan,
            67.27272727272725,
            62.63106224229332,
            63.9289091172308,
        ],
        [
            nan,
            nan,
            nan,
            35.897435897435884,
            24.561403508771914,
            16.022889842632317,
            28.967768257853926,
            32.54581250946543,
        ],
        [
            nan,
            nan,
            nan,
            0.0,
            0.0,
            15.450643776824041,
            8.812729498164025,
            6.542480690595194,
        ],
    ];
    let out = run_outputs("adx(3)", &bars);
    for (o, want) in talib.iter().enumerate() {
        for (i, w) in want.iter().enumerate() {
            match out[i][o] {
                None => assert!(w.is_nan(), "output {o} at {i}: TA-Lib {w}, tickflow none"),
                Some(v) => assert!(
                    close(v, *w, 1e-12 * w.abs().max(1.0)),
                    "output {o} at {i}: {v} vs {w}"
                ),
            }
        }
    }
    let lookback = |o: usize| out.iter().position(|v| v[o].is_some());
    assert_eq!(
        (lookback(0), lookback(1), lookback(2)),
        (Some(5), Some(3), Some(3))
    );
    assert!(out.iter().skip(3).all(|v| v[1].is_some() && v[2].is_some()));
    let mut ind = "adx(3)".parse::<IndicatorSpec>().unwrap().build();
    for (i, &(h, l, c)) in bars.iter().enumerate() {
        let vals = ind.update(&Input::bar(0, c, h, l, c, 1.0));
        assert_eq!(vals.is_some(), i >= 3, "some output warm at {i}");
        // Partly warm: the ADX's slot is NaN and flagged.
        if (3..5).contains(&i) {
            assert!(vals.unwrap()[0].is_nan());
            assert_eq!(ind.warm_outputs(), Some(&[false, true, true][..]));
        } else {
            assert_eq!(ind.warm_outputs(), None, "{i}");
        }
    }
}

#[test]
fn vwap_restarts_each_utc_day_or_rolls_over_a_window() {
    const DAY: i64 = 86_400_000_000_000;
    let inputs = [
        Input::bar(DAY - 2, 1.0, 1.0, 1.0, 1.0, 1.0),
        Input::bar(DAY - 1, 4.0, 4.0, 4.0, 4.0, 2.0),
        Input::bar(DAY, 10.0, 10.0, 10.0, 10.0, 3.0),
        Input::bar(DAY + 1, 20.0, 20.0, 20.0, 20.0, 1.0),
    ];
    let mut day: Box<dyn Indicator> = "vwap".parse::<IndicatorSpec>().unwrap().build();
    let mut roll: Box<dyn Indicator> = "vwap(2)".parse::<IndicatorSpec>().unwrap().build();
    let d: Vec<f64> = inputs.iter().map(|x| day.update(x).unwrap()[0]).collect();
    assert_eq!(d, [1.0, 3.0, 10.0, 12.5]);
    let r: Vec<Option<f64>> = inputs
        .iter()
        .map(|x| roll.update(x).map(|v| v[0]))
        .collect();
    assert_eq!(r, [None, Some(3.0), Some(7.6), Some(12.5)]);
}

#[test]
fn spread_stats_roll() {
    let mut s = SpreadStats::new(3);
    let out: Vec<Option<Vec<f64>>> = [1.0, 3.0, 2.0, 1.0, 1.0, 1.0]
        .iter()
        .map(|&sp| {
            s.update(&Input {
                spread: sp,
                ..Input::price(1.0)
            })
            .map(<[f64]>::to_vec)
        })
        .collect();
    assert_eq!(out[..2], [None, None]);
    assert_eq!(out[2], Some(vec![2.0, 3.0]));
    assert_eq!(out[3], Some(vec![2.0, 3.0]));
    assert_eq!(out[5], Some(vec![1.0, 1.0]));
}

#[test]
fn rolling_extremes_match_a_scan() {
    let xs: Vec<f64> = (0..500u32).map(|i| f64::from((i * 37) % 53)).collect();
    let mut hi = window::RollingExtreme::max(7);
    let mut lo = window::RollingExtreme::min(7);
    for (i, &x) in xs.iter().enumerate() {
        let w = &xs[i.saturating_sub(6)..=i];
        assert_eq!(hi.push(x), w.iter().copied().fold(f64::MIN, f64::max));
        assert_eq!(lo.push(x), w.iter().copied().fold(f64::MAX, f64::min));
    }
}

#[test]
fn a_tick_is_its_mid_with_tick_volume() {
    let t = Tick {
        symbol: "EURUSD".into(),
        source: "sim".into(),
        ts_event_ns: 5,
        ts_recv_ns: 6,
        scale: 5,
        bid: 110_000,
        ask: 110_004,
        last: None,
        bid_size: 0.0,
        ask_size: 0.0,
        volume: 0.0,
        flags: 0,
        key: String::new(),
        route: Default::default(),
        replay: false,
    };
    let x = Input::from_tick(&t);
    assert_eq!((x.high, x.low, x.close), (1.10002, 1.10002, 1.10002));
    assert_eq!((x.volume, x.time_ns), (1.0, 5));
    assert!(close(x.spread, 0.00004, 1e-15));
}

#[test]
fn indicator_lists_split_at_top_level_commas() {
    let l: IndicatorList = "sma(20), macd(12,26,9),bbands(20,2.5),vwap,ema(12)"
        .parse()
        .unwrap();
    assert_eq!(
        l.to_string(),
        "sma(20),macd(12,26,9),bbands(20,2.5),vwap,ema(12)"
    );
    assert_eq!(l.0.len(), 5);
    assert!("sma(20),foo(1)".parse::<IndicatorList>().is_err());
}
