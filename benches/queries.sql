-- The traffic queries of the side-by-side benchmark, run as written by Nyala and DuckDB.
-- Data: benches/compare.rs `generate` (readings per point, lane and minute from
-- 2023-01-01 00:00 UTC; valid = 0 marks a good reading; speeds >= 250 are sensor glitches).

-- Q1: hourly average and maximum speed over all points
SELECT date_trunc('hour', ts) AS hr, avg(speed_c2) AS avg_speed, max(speed_c2) AS max_speed
FROM traffic WHERE valid = 0 GROUP BY 1 ORDER BY 1;

-- Q2: the same for one measurement point
SELECT date_trunc('hour', ts) AS hr, avg(speed_c2) AS avg_speed, max(speed_c2) AS max_speed
FROM traffic WHERE valid = 0 AND uid = 42 GROUP BY 1 ORDER BY 1;

-- Q3: average speed by day of week and hour of day
SELECT extract(dow FROM ts) AS dow, extract(hour FROM ts) AS hour, avg(speed_c1) AS avg_speed
FROM traffic WHERE valid = 0 GROUP BY 1, 2 ORDER BY 1, 2;

-- Q4: average speed and vehicles per road (join with the points dimension table)
SELECT p.road, avg(t.speed_c1) AS avg_speed, sum(t.count_c1) AS vehicles
FROM traffic t JOIN points p ON t.uid = p.uid
WHERE t.valid = 0 GROUP BY p.road ORDER BY p.road;

-- Q5: readings and vehicles over the last 24 hours of data
SELECT count(*) AS readings, sum(count_c1 + count_c2 + count_c3 + count_c4 + count_c5) AS vehicles
FROM traffic WHERE ts >= TIMESTAMP '2023-01-03 11:20:00';

-- Q6: top 10 points by maximum plausible speed
SELECT uid, max(speed_c1) AS max_speed FROM traffic WHERE speed_c1 < 250
GROUP BY uid ORDER BY max_speed DESC, uid LIMIT 10;
