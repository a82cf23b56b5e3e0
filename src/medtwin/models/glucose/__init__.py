"""models/glucose"""
