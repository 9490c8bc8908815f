fn main() {
    let path = std::env::args().nth(1).unwrap();
    let db = sled::Config::new().path(&path).open().unwrap();
    let mut total = 0;
    for name in db.tree_names() {
        let t = db.open_tree(&name).unwrap();
        let (mut n, mut k, mut v) = (0u64, 0u64, 0u64);
        for item in t.iter() {
            let (key, val) = item.unwrap();
            n += 1;
            k += key.len() as u64;
            v += val.len() as u64;
        }
        total += k + v;
        println!(
            "{:20} {:>8} entries, keys {:>6.1} MB, values {:>6.1} MB",
            String::from_utf8_lossy(&name),
            n,
            k as f64 / 1e6,
            v as f64 / 1e6
        );
    }
    println!(
        "raw total {:.1} MB; size on disk {:.1} MB",
        total as f64 / 1e6,
        db.size_on_disk().unwrap() as f64 / 1e6
    );
}
